/*
 * Open-file-description byte locks (fcntl F_OFD_SETLK / F_OFD_GETLK), the locks qemu's file-posix driver puts on
 * images. Unlike classic POSIX record locks they belong to the open file description, not to the process: two
 * opens of the same file in one process conflict with each other, and closing some other descriptor of the file
 * does not drop them. Node has no binding for them.
 *
 *   ofdSetLock(fd, start, length, type) -> true when placed (or removed), false when a lock held through another
 *       open file description conflicts (EAGAIN/EACCES). type: 'shared' (F_RDLCK), 'exclusive' (F_WRLCK) or
 *       'unlock' (F_UNLCK). Never waits.
 *   ofdGetLock(fd, start, length, type) -> null when a lock of `type` ('shared' or 'exclusive') could be placed,
 *       else the type ('shared' or 'exclusive') of a conflicting lock held through another open file description.
 *
 * Other errors throw an Error with `code` = the errno name: EINVAL where the kernel has no OFD locks (Linux
 * before 3.15) or the file system refuses them, ENOLCK, EBADF, ...; ENOSYS on a platform without OFD locks.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include "concerns.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

/* 'shared' -> F_RDLCK, 'exclusive' -> F_WRLCK, 'unlock' (when allowed) -> F_UNLCK; -1 (TypeError pending) else. */
static int lock_type(napi_env env, napi_value value, bool allow_unlock) {
  char text[16];
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, text, sizeof text, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "type must be a string");
    return -1;
  }
  if (strcmp(text, "shared") == 0) return F_RDLCK;
  if (strcmp(text, "exclusive") == 0) return F_WRLCK;
  if (allow_unlock && strcmp(text, "unlock") == 0) return F_UNLCK;
  napi_throw_type_error(env, NULL, allow_unlock ? "type must be 'shared', 'exclusive' or 'unlock'" : "type must be 'shared' or 'exclusive'");
  return -1;
}

/* One call's arguments: the descriptor, the lock to place or test, and the call described for error messages. */
struct lock_call {
  int fd;
  struct flock lock;
  char what[96];
};

/* Reads (fd, start, length, type) into `call`; false (exception pending) on bad arguments. */
static bool read_lock_call(napi_env env, napi_callback_info info, bool allow_unlock, const char *command, struct lock_call *call) {
  napi_value argv[4];
  int64_t start, length;
  if (!qk_get_args(env, info, 4, argv, "expected (fd, start, length, type)")) return false;
  if (!qk_get_fd(env, argv[0], &call->fd) || !qk_get_offset(env, argv[1], "start", &start) || !qk_get_offset(env, argv[2], "length", &length)) return false;
  int type = lock_type(env, argv[3], allow_unlock);
  if (type < 0) return false;
  memset(&call->lock, 0, sizeof call->lock);
  call->lock.l_type = (short)type;
  call->lock.l_whence = SEEK_SET;
  call->lock.l_start = (off_t)start;
  call->lock.l_len = (off_t)length;
  call->lock.l_pid = 0; /* OFD locks require 0 here */
  snprintf(call->what, sizeof call->what, "fcntl(%d, %s, %lld+%lld)", call->fd, command, (long long)start, (long long)length);
  return true;
}

static napi_value ofd_set_lock(napi_env env, napi_callback_info info) {
  struct lock_call call;
  if (!read_lock_call(env, info, true, "F_OFD_SETLK", &call)) return NULL;
#ifdef F_OFD_SETLK
  bool placed = true;
  if (fcntl(call.fd, F_OFD_SETLK, &call.lock) == -1) {
    int err = errno;
    if (err != EAGAIN && err != EACCES) return qk_throw_errno(env, err, call.what);
    placed = false;
  }
  napi_value out;
  NAPI_CALL(env, napi_get_boolean(env, placed, &out));
  return out;
#else
  return qk_throw_errno(env, ENOSYS, call.what);
#endif
}

static napi_value ofd_get_lock(napi_env env, napi_callback_info info) {
  struct lock_call call;
  if (!read_lock_call(env, info, false, "F_OFD_GETLK", &call)) return NULL;
#ifdef F_OFD_GETLK
  if (fcntl(call.fd, F_OFD_GETLK, &call.lock) == -1) return qk_throw_errno(env, errno, call.what);
  napi_value out;
  if (call.lock.l_type == F_UNLCK) {
    NAPI_CALL(env, napi_get_null(env, &out));
  } else {
    NAPI_CALL(env, napi_create_string_utf8(env, call.lock.l_type == F_WRLCK ? "exclusive" : "shared", NAPI_AUTO_LENGTH, &out));
  }
  return out;
#else
  return qk_throw_errno(env, ENOSYS, call.what);
#endif
}

bool qk_register_ofd_locks(napi_env env, napi_value exports) {
  static const qk_function functions[] = {{"ofdSetLock", ofd_set_lock}, {"ofdGetLock", ofd_get_lock}};
  return qk_define_functions(env, exports, functions, sizeof functions / sizeof functions[0]);
}
