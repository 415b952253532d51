;; expect: table 0 holds no function of type (i32) -> ()
(module
  (import "wasnap" "spawn" (func (param i32 i32 i32 i32) (result i32)))
  (memory 1)
  (global $__stack_pointer (mut i32) (i32.const 4096))
  (table 1 funcref)
  (elem (i32.const 0) $not_a_coroutine)
  (func $not_a_coroutine (param i32 i32))
  (func (export "run")))
