;; expect: exports neither _start nor run
(module
  (import "wasnap" "yield" (func (param i32 i32) (result i32)))
  (memory 1)
  (func (export "main")))
