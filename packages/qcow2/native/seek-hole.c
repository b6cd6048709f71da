/*
 * seek_hole: lseek(SEEK_DATA) / lseek(SEEK_HOLE) for Node, which has no binding for them.
 *
 *   seekData(fd, offset) -> offset of the first data byte at or after `offset`, or -1 (ENXIO: only hole up to EOF)
 *   seekHole(fd, offset) -> offset of the first hole byte at or after `offset` (EOF counts as a hole), or -1 (ENXIO)
 *
 * Any other error throws an Error with `code` set to the errno name (EINVAL when the file system does not
 * support the whence values, EBADF, ...). Plain Node-API (C), no helper packages; built by native/build.mjs.
 * The calls are synchronous: lseek only consults file-system metadata.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <node_api.h>

#if !defined(SEEK_DATA) || !defined(SEEK_HOLE)
#error "this platform has no SEEK_DATA/SEEK_HOLE"
#endif

/* Offsets beyond 2^53 cannot round-trip through a JS number. */
#define MAX_SAFE_OFFSET ((int64_t)9007199254740991LL)

#define NAPI_CALL(env, call)                                                              \
  do {                                                                                    \
    if ((call) != napi_ok) {                                                              \
      const napi_extended_error_info *info_ = NULL;                                       \
      napi_get_last_error_info((env), &info_);                                            \
      bool pending_ = false;                                                              \
      napi_is_exception_pending((env), &pending_);                                        \
      if (!pending_)                                                                      \
        napi_throw_error((env), NULL,                                                     \
                         info_ && info_->error_message ? info_->error_message : "N-API call failed"); \
      return NULL;                                                                        \
    }                                                                                     \
  } while (0)

static const char *errno_code(int err) {
  switch (err) {
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENXIO: return "ENXIO";
    case EOVERFLOW: return "EOVERFLOW";
    case ESPIPE: return "ESPIPE";
#ifdef ENOTSUP
    case ENOTSUP: return "ENOTSUP";
#endif
    default: return "EIO";
  }
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char *name) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) {
    napi_throw_type_error(env, NULL, "expected (fd, offset)");
    return NULL;
  }

  double fd_d, off_d;
  napi_valuetype t0, t1;
  NAPI_CALL(env, napi_typeof(env, argv[0], &t0));
  NAPI_CALL(env, napi_typeof(env, argv[1], &t1));
  if (t0 != napi_number || t1 != napi_number) {
    napi_throw_type_error(env, NULL, "fd and offset must be numbers");
    return NULL;
  }
  NAPI_CALL(env, napi_get_value_double(env, argv[0], &fd_d));
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &off_d));
  if (!(fd_d >= 0 && fd_d <= 2147483647.0 && fd_d == (double)(int)fd_d)) {
    napi_throw_range_error(env, NULL, "fd must be a non-negative integer");
    return NULL;
  }
  if (!(off_d >= 0 && off_d <= (double)MAX_SAFE_OFFSET && off_d == (double)(int64_t)off_d)) {
    napi_throw_range_error(env, NULL, "offset must be a non-negative safe integer");
    return NULL;
  }

  off_t result = lseek((int)fd_d, (off_t)(int64_t)off_d, whence);
  int err = errno;
  napi_value out;
  if (result == (off_t)-1) {
    if (err == ENXIO) {
      NAPI_CALL(env, napi_create_int64(env, -1, &out));
      return out;
    }
    char message[160];
    snprintf(message, sizeof message, "%s: %s, lseek(%d, %.0f, %s)", errno_code(err), strerror(err), (int)fd_d,
             off_d, name);
    napi_value code_v, msg_v, error_v, errno_v;
    NAPI_CALL(env, napi_create_string_utf8(env, errno_code(err), NAPI_AUTO_LENGTH, &code_v));
    NAPI_CALL(env, napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg_v));
    NAPI_CALL(env, napi_create_error(env, code_v, msg_v, &error_v));
    NAPI_CALL(env, napi_create_int32(env, -err, &errno_v));
    NAPI_CALL(env, napi_set_named_property(env, error_v, "errno", errno_v));
    napi_throw(env, error_v);
    return NULL;
  }
  NAPI_CALL(env, napi_create_int64(env, (int64_t)result, &out));
  return out;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_DATA, "SEEK_DATA");
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_HOLE, "SEEK_HOLE");
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
