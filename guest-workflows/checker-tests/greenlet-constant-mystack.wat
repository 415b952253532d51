;; as: greenlet
;; expect: contains the bytes special-g-stack
(module
  (import "wasnap" "yield" (func (param i32 i32) (result i32)))
  (import "wasnap" "spawn" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "switch" (func (param i32 i32) (result i32)))
  (memory 1)
  (global $__stack_pointer (mut i32) (i32.const 4096))
  (table 1 funcref)
  (elem (i32.const 0) $g)
  (data (i32.const 16) "special-g-stack")
  (func $g (param i32))
  (func (export "run")))
