;; expect: imports wasnap.wait, which is not in the ABI
(module
  (import "wasnap" "wait" (func (param i32) (result i32)))
  (memory 1)
  (func (export "run")))
