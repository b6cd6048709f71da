/*
 * What every concern of the addon shares: checking Node-API calls, reading integer arguments that must survive
 * a round trip through a JS number, and turning an errno into the Error Node itself would throw (with `code`
 * set to the errno name and `errno` to its negated number, as fs errors carry them).
 */
#ifndef QCOWKIT_NAPI_HELPERS_H
#define QCOWKIT_NAPI_HELPERS_H

#include <stdbool.h>
#include <stdint.h>
#include <node_api.h>

/* Offsets beyond 2^53 cannot round-trip through a JS number. */
#define QK_MAX_SAFE_INTEGER ((int64_t)9007199254740991LL)

/* Returns NULL from the calling function (with an exception pending) when a Node-API call fails. */
#define NAPI_CALL(env, call)                   \
  do {                                         \
    if ((call) != napi_ok) {                   \
      qk_throw_last_napi_error(env);           \
      return NULL;                             \
    }                                          \
  } while (0)

void qk_throw_last_napi_error(napi_env env);

/* The errno's symbolic name ("EAGAIN", "EXDEV", ...); "EIO" for one this table does not know. */
const char *qk_errno_name(int err);

/* Throws Error("<CODE>: <strerror>, <what>") with code and errno set. Always returns NULL. */
napi_value qk_throw_errno(napi_env env, int err, const char *what);

/* The same error as a value (for rejecting a promise). NULL when even that failed. */
napi_value qk_errno_error(napi_env env, int err, const char *what);

/*
 * Reads exactly `count` arguments into argv; throws a TypeError naming `usage` when there are fewer.
 * Returns false (exception pending) on failure.
 */
bool qk_get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv, const char *usage);

/* A file descriptor: an integer in [0, INT32_MAX]. Returns false (RangeError/TypeError pending) otherwise. */
bool qk_get_fd(napi_env env, napi_value value, int *fd);

/* A non-negative safe integer (an offset or a length). Returns false (RangeError/TypeError pending) otherwise. */
bool qk_get_offset(napi_env env, napi_value value, const char *name, int64_t *out);

/* One function of the exports object. */
typedef struct {
  const char *name;
  napi_callback callback;
} qk_function;

/* Defines `count` functions on `exports`; false on failure. */
bool qk_define_functions(napi_env env, napi_value exports, const qk_function *functions, size_t count);

#endif
