;; as: deploy
;; expect: the deploy demo must export the handler update_machines
(module
  (import "wasnap" "yield" (func (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func (param i32 i32) (result i32)))
  (import "wasnap" "respond" (func (param i32 i32)))
  (memory 1)
  (func (export "run"))
  (func (export "query_status")))
