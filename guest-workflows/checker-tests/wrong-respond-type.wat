;; expect: wasnap.respond has type
(module
  (import "wasnap" "respond" (func (param i32 i32) (result i32)))
  (memory 1)
  (func (export "run"))
  (func (export "query_status")))
