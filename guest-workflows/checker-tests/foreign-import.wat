;; expect: only wasnap and wasi_snapshot_preview1 are allowed
(module
  (import "env" "abort" (func (param i32 i32 i32 i32)))
  (memory 1)
  (func (export "run")))
