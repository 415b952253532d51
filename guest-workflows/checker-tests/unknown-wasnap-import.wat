;; expect: imports wasnap.sleep, which is not in the ABI
(module
  (import "wasnap" "sleep" (func (param i32) (result i32)))
  (memory 1)
  (func (export "run")))
