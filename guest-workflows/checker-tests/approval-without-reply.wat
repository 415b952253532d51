;; as: approval
;; expect: the approval demo must import wasnap.reply
(module
  (import "wasnap" "yield" (func (param i32 i32) (result i32)))
  (memory 1)
  (func (export "run")))
