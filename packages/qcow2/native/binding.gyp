{
  # Built by native/build.mjs (run from the root `prepare` script), never by npm's implicit `node-gyp rebuild`:
  # npm only auto-builds a package whose *root* holds binding.gyp, and this file lives in packages/qcow2/native/.
  "targets": [
    {
      "target_name": "qcowkit_native",
      "sources": ["qcowkit-native.c", "napi-helpers.c", "seek-hole.c", "ofd-locks.c", "copy-file-range.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
      "ldflags": ["-Wl,--as-needed", "-s"],
      "defines": ["NAPI_VERSION=8"],
      "conditions": [
        ["OS=='mac'", { "xcode_settings": { "MACOSX_DEPLOYMENT_TARGET": "10.15" }, "ldflags!": ["-Wl,--as-needed", "-s"] }]
      ]
    }
  ]
}
