;; expect: wasnap.yield has type
(module
  (import "wasnap" "yield" (func (param i64 i32) (result i32)))
  (memory 1)
  (func (export "run")))
