/* Each concern of the addon registers its functions on the exports object; false when that failed. */
#ifndef QCOWKIT_CONCERNS_H
#define QCOWKIT_CONCERNS_H

#include "napi-helpers.h"

bool qk_register_seek_hole(napi_env env, napi_value exports);
bool qk_register_ofd_locks(napi_env env, napi_value exports);
bool qk_register_copy_file_range(napi_env env, napi_value exports);

#endif
