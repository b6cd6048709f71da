/*
 * qcowkit_native: the system calls Node has no binding for, in one Node-API (C) addon, one file per concern:
 *   seek-hole.c        lseek SEEK_DATA/SEEK_HOLE (holes of sparse files)
 *   ofd-locks.c        fcntl F_OFD_SETLK/F_OFD_GETLK (qemu's image locks)
 *   copy-file-range.c  copy_file_range (kernel copies between files)
 * Plain Node-API, NAPI_VERSION 8 (Node >= 12.22), no helper packages. Built by native/build.mjs; a prebuilt
 * linux-x64 copy ships in native/prebuilt/. `abi` below changes whenever a function is added or changes meaning,
 * so the loader can refuse a stale build.
 */
#include "concerns.h"

#define QCOWKIT_NATIVE_ABI 2

NAPI_MODULE_INIT() {
  napi_value abi;
  if (!qk_register_seek_hole(env, exports) || !qk_register_ofd_locks(env, exports) || !qk_register_copy_file_range(env, exports)) return NULL;
  if (napi_create_int32(env, QCOWKIT_NATIVE_ABI, &abi) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "abi", abi) != napi_ok) return NULL;
  return exports;
}
