/*
 * copy_file_range(2): the kernel copies bytes between two files without them passing through user space, and
 * on file systems that can share extents (XFS, Btrfs, NFS 4.2, ...) without copying them at all.
 *
 *   copyFileRange(fdIn, offsetIn, fdOut, offsetOut, length) -> bytes copied
 *   copyFileRangeAsync(fdIn, offsetIn, fdOut, offsetOut, length) -> Promise of the same, on libuv's thread pool
 *
 * Positional on both sides (neither file offset moves). Copies until `length` bytes are done or the input ends;
 * fewer than `length` means the input ended there, or an error came after some bytes were copied (the next call
 * reports it). An error before any byte was copied throws (rejects) with `code` = the errno name. The ones that
 * mean "use read/write instead", not "the data is bad":
 *   EXDEV   the files are on different file systems (kernels before 5.3, or of different types since 5.19)
 *   ENOSYS  the kernel (before 4.5) or the platform has no copy_file_range
 *   EINVAL, EOPNOTSUPP  the file system or file type cannot do it (or the ranges of one file overlap)
 * EBADF also comes from an output opened with O_APPEND or read-only.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include "concerns.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

/* One call is capped below 2 GiB, as Linux caps read/write. */
#define MAX_CHUNK ((int64_t)1 << 30)

struct copy_request {
  int fd_in, fd_out;
  int64_t offset_in, offset_out, length;
  int64_t copied;
  int err;
  napi_deferred deferred;
  napi_async_work work;
};

/* Runs on any thread: no Node-API in here. */
static void copy_run(struct copy_request *request) {
  request->copied = 0;
  request->err = 0;
#ifdef __linux__
  while (request->copied < request->length) {
    int64_t left = request->length - request->copied;
    loff_t in = (loff_t)(request->offset_in + request->copied);
    loff_t out = (loff_t)(request->offset_out + request->copied);
    ssize_t n = copy_file_range(request->fd_in, &in, request->fd_out, &out, (size_t)(left < MAX_CHUNK ? left : MAX_CHUNK), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (request->copied == 0) request->err = errno;
      return;
    }
    if (n == 0) return; /* end of the input */
    request->copied += n;
  }
#else
  request->err = ENOSYS;
#endif
}

static bool read_request(napi_env env, napi_callback_info info, struct copy_request *request) {
  napi_value argv[5];
  if (!qk_get_args(env, info, 5, argv, "expected (fdIn, offsetIn, fdOut, offsetOut, length)")) return false;
  return qk_get_fd(env, argv[0], &request->fd_in) && qk_get_offset(env, argv[1], "offsetIn", &request->offset_in) &&
         qk_get_fd(env, argv[2], &request->fd_out) && qk_get_offset(env, argv[3], "offsetOut", &request->offset_out) &&
         qk_get_offset(env, argv[4], "length", &request->length);
}

static void describe(const struct copy_request *request, char *what, size_t size) {
  snprintf(what, size, "copy_file_range(%d@%lld -> %d@%lld, %lld)", request->fd_in, (long long)request->offset_in,
           request->fd_out, (long long)request->offset_out, (long long)request->length);
}

static napi_value copy_file_range_sync(napi_env env, napi_callback_info info) {
  struct copy_request request;
  if (!read_request(env, info, &request)) return NULL;
  copy_run(&request);
  if (request.err != 0) {
    char what[128];
    describe(&request, what, sizeof what);
    return qk_throw_errno(env, request.err, what);
  }
  napi_value out;
  NAPI_CALL(env, napi_create_int64(env, request.copied, &out));
  return out;
}

static void copy_execute(napi_env env, void *data) {
  (void)env;
  copy_run((struct copy_request *)data);
}

static void copy_complete(napi_env env, napi_status status, void *data) {
  struct copy_request *request = (struct copy_request *)data;
  napi_value result = NULL;
  if (status != napi_ok) {
    napi_value message;
    if (napi_create_string_utf8(env, "copy_file_range was cancelled", NAPI_AUTO_LENGTH, &message) == napi_ok) {
      napi_create_error(env, NULL, message, &result);
    }
    if (result != NULL) napi_reject_deferred(env, request->deferred, result);
  } else if (request->err != 0) {
    char what[128];
    describe(request, what, sizeof what);
    result = qk_errno_error(env, request->err, what);
    if (result != NULL) napi_reject_deferred(env, request->deferred, result);
  } else if (napi_create_int64(env, request->copied, &result) == napi_ok) {
    napi_resolve_deferred(env, request->deferred, result);
  }
  napi_delete_async_work(env, request->work);
  free(request);
}

static napi_value copy_file_range_async(napi_env env, napi_callback_info info) {
  struct copy_request *request = calloc(1, sizeof *request);
  if (request == NULL) return qk_throw_errno(env, ENOMEM, "copyFileRangeAsync");
  napi_value promise, name;
  if (!read_request(env, info, request) || napi_create_promise(env, &request->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "qcowkit:copyFileRange", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, copy_execute, copy_complete, request, &request->work) != napi_ok) {
    free(request);
    qk_throw_last_napi_error(env);
    return NULL;
  }
  if (napi_queue_async_work(env, request->work) != napi_ok) {
    napi_delete_async_work(env, request->work);
    free(request);
    qk_throw_last_napi_error(env);
    return NULL;
  }
  return promise;
}

bool qk_register_copy_file_range(napi_env env, napi_value exports) {
  static const qk_function functions[] = {{"copyFileRange", copy_file_range_sync}, {"copyFileRangeAsync", copy_file_range_async}};
  return qk_define_functions(env, exports, functions, sizeof functions / sizeof functions[0]);
}
