;; expect: exports handlers (update_machines) but does not import wasnap.respond
(module
  (import "wasnap" "yield" (func (param i32 i32) (result i32)))
  (memory 1)
  (func (export "run"))
  (func (export "update_machines")))
