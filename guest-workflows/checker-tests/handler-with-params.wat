;; expect: handler query_status is not a function of type () -> ()
(module
  (import "wasnap" "yield" (func (param i32 i32) (result i32)))
  (import "wasnap" "respond" (func (param i32 i32)))
  (memory 1)
  (func (export "run"))
  (func (export "query_status") (param i32)))
