/* Shared argument checks and errno errors of the addon; see napi-helpers.h. */
#define _GNU_SOURCE
#include "napi-helpers.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void qk_throw_last_napi_error(napi_env env) {
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, NULL, info && info->error_message ? info->error_message : "N-API call failed");
}

const char *qk_errno_name(int err) {
  switch (err) {
    case EACCES: return "EACCES";
    case EAGAIN: return "EAGAIN";
    case EBADF: return "EBADF";
    case EDEADLK: return "EDEADLK";
    case EFBIG: return "EFBIG";
    case EINTR: return "EINTR";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case EISDIR: return "EISDIR";
    case ENOLCK: return "ENOLCK";
    case ENOMEM: return "ENOMEM";
    case ENOSPC: return "ENOSPC";
    case ENOSYS: return "ENOSYS";
    case ENXIO: return "ENXIO";
    case EOVERFLOW: return "EOVERFLOW";
    case EPERM: return "EPERM";
    case ESPIPE: return "ESPIPE";
    case ETXTBSY: return "ETXTBSY";
    case EXDEV: return "EXDEV";
#ifdef ENOTSUP
    case ENOTSUP: return "ENOTSUP";
#endif
#if defined(EOPNOTSUPP) && (!defined(ENOTSUP) || EOPNOTSUPP != ENOTSUP)
    case EOPNOTSUPP: return "EOPNOTSUPP";
#endif
    default: return "EIO";
  }
}

napi_value qk_errno_error(napi_env env, int err, const char *what) {
  char message[256];
  snprintf(message, sizeof message, "%s: %s, %s", qk_errno_name(err), strerror(err), what);
  napi_value code_v, msg_v, error_v, errno_v;
  if (napi_create_string_utf8(env, qk_errno_name(err), NAPI_AUTO_LENGTH, &code_v) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg_v) != napi_ok) return NULL;
  if (napi_create_error(env, code_v, msg_v, &error_v) != napi_ok) return NULL;
  if (napi_create_int32(env, -err, &errno_v) != napi_ok) return NULL;
  if (napi_set_named_property(env, error_v, "errno", errno_v) != napi_ok) return NULL;
  return error_v;
}

napi_value qk_throw_errno(napi_env env, int err, const char *what) {
  napi_value error = qk_errno_error(env, err, what);
  if (error == NULL) {
    qk_throw_last_napi_error(env);
    return NULL;
  }
  napi_throw(env, error);
  return NULL;
}

bool qk_get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv, const char *usage) {
  size_t argc = count;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    qk_throw_last_napi_error(env);
    return false;
  }
  if (argc < count) {
    napi_throw_type_error(env, NULL, usage);
    return false;
  }
  return true;
}

static bool get_number(napi_env env, napi_value value, const char *name, double *out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok) {
    qk_throw_last_napi_error(env);
    return false;
  }
  if (type != napi_number) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a number", name);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  if (napi_get_value_double(env, value, out) != napi_ok) {
    qk_throw_last_napi_error(env);
    return false;
  }
  return true;
}

bool qk_get_fd(napi_env env, napi_value value, int *fd) {
  double d;
  if (!get_number(env, value, "fd", &d)) return false;
  if (!(d >= 0 && d <= 2147483647.0 && d == (double)(int)d)) {
    napi_throw_range_error(env, NULL, "fd must be a non-negative integer");
    return false;
  }
  *fd = (int)d;
  return true;
}

bool qk_define_functions(napi_env env, napi_value exports, const qk_function *functions, size_t count) {
  for (size_t i = 0; i < count; i++) {
    napi_value fn;
    if (napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].callback, NULL, &fn) != napi_ok) return false;
    if (napi_set_named_property(env, exports, functions[i].name, fn) != napi_ok) return false;
  }
  return true;
}

bool qk_get_offset(napi_env env, napi_value value, const char *name, int64_t *out) {
  double d;
  if (!get_number(env, value, name, &d)) return false;
  if (!(d >= 0 && d <= (double)QK_MAX_SAFE_INTEGER && d == (double)(int64_t)d)) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a non-negative safe integer", name);
    napi_throw_range_error(env, NULL, message);
    return false;
  }
  *out = (int64_t)d;
  return true;
}
