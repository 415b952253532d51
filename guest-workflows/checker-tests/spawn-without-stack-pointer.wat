;; expect: names no __stack_pointer global
(module
  (import "wasnap" "spawn" (func (param i32 i32 i32 i32) (result i32)))
  (memory 1)
  (global $sp (mut i32) (i32.const 4096))
  (table 1 funcref)
  (elem (i32.const 0) $co)
  (func $co (param i32))
  (func (export "run")))
