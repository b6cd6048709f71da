/*
 * lseek(SEEK_DATA) / lseek(SEEK_HOLE), which Node has no binding for.
 *
 *   seekData(fd, offset) -> offset of the first data byte at or after `offset`, or -1 (ENXIO: only hole up to EOF)
 *   seekHole(fd, offset) -> offset of the first hole byte at or after `offset` (EOF counts as a hole), or -1 (ENXIO)
 *
 * Any other error throws an Error with `code` set to the errno name (EINVAL when the file system does not
 * support the whence values, EBADF, ...; ENOSYS on a platform without them). Synchronous: lseek only consults
 * file-system metadata.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include "concerns.h"

#include <errno.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char *name) {
  napi_value argv[2];
  int fd;
  int64_t offset;
  if (!qk_get_args(env, info, 2, argv, "expected (fd, offset)")) return NULL;
  if (!qk_get_fd(env, argv[0], &fd) || !qk_get_offset(env, argv[1], "offset", &offset)) return NULL;
  char what[96];
  snprintf(what, sizeof what, "lseek(%d, %lld, %s)", fd, (long long)offset, name);
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
  off_t result = lseek(fd, (off_t)offset, whence);
  int err = errno;
  napi_value out;
  if (result == (off_t)-1) {
    if (err != ENXIO) return qk_throw_errno(env, err, what);
    NAPI_CALL(env, napi_create_int64(env, -1, &out));
    return out;
  }
  NAPI_CALL(env, napi_create_int64(env, (int64_t)result, &out));
  return out;
#else
  (void)whence;
  return qk_throw_errno(env, ENOSYS, what);
#endif
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
#ifdef SEEK_DATA
  return do_seek(env, info, SEEK_DATA, "SEEK_DATA");
#else
  return do_seek(env, info, 0, "SEEK_DATA");
#endif
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
#ifdef SEEK_HOLE
  return do_seek(env, info, SEEK_HOLE, "SEEK_HOLE");
#else
  return do_seek(env, info, 0, "SEEK_HOLE");
#endif
}

bool qk_register_seek_hole(napi_env env, napi_value exports) {
  static const qk_function functions[] = {{"seekData", seek_data}, {"seekHole", seek_hole}};
  return qk_define_functions(env, exports, functions, sizeof functions / sizeof functions[0]);
}
