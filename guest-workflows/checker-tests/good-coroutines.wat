;; A well-formed module, so that the checker is seen to accept as well.
;; expect: nothing
(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "yield" (func (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func (param i32 i32) (result i32)))
  (import "wasnap" "spawn" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "switch" (func (param i32 i32) (result i32)))
  (import "wasnap" "current" (func (result i32)))
  (memory 1)
  (global $__stack_pointer (mut i32) (i32.const 4096))
  (table 1 funcref)
  (elem (i32.const 0) $co)
  (func $co (param i32))
  (func (export "_start")))
