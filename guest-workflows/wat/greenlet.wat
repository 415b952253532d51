;; The article's greenlet demo, written by hand against the wasnap ABI.
;; f is the workflow's main (`run`); g is a coroutine on its own shadow stack.
;; Memory map: 0..4096 strings and scratch, 4096..8192 main's shadow stack,
;; 8192..12288 g's shadow stack.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "spawn" (func $spawn (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "switch" (func $switch (param i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; The engine points this at the top of a coroutine's own stack when the
  ;; coroutine first runs, so it must carry the LLVM name (kept in the name
  ;; section by `wat2wasm --debug-names`).
  (global $__stack_pointer (mut i32) (i32.const 8192))

  ;; `spawn` runs table0[func]: g must be in table 0.
  (table 1 funcref)
  (elem (i32.const 0) $g)

  (data (i32.const 16) "enter g\n")
  (data (i32.const 32) "leave g\n")
  (data (i32.const 48) "a\n")
  (data (i32.const 52) "b\n")
  (data (i32.const 56) "c\n")
  ;; 64..72: one iovec for fd_write; 72..76: its byte count.

  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 64) (local.get $ptr))
    (i32.store (i32.const 68) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 72))))

  (func $g (param $arg i32)
    (local $sp i32)
    ;; A 16-byte frame on g's own stack for `mystack`.
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (global.set $__stack_pointer (local.get $sp))
    (call $print (i32.const 16) (i32.const 8))
    ;; mystack = "special-g-stack", stored piece by piece so that the bytes
    ;; exist only on g's stack, never in a data segment.
    (i32.store (local.get $sp) (i32.const 0x63657073))               ;; "spec"
    (i32.store offset=4 (local.get $sp) (i32.const 0x2d6c6169))      ;; "ial-"
    (i32.store offset=8 (local.get $sp) (i32.const 0x74732d67))      ;; "g-st"
    (i32.store16 offset=12 (local.get $sp) (i32.const 0x6361))       ;; "ac"
    (i32.store8 offset=14 (local.get $sp) (i32.const 0x6b))          ;; "k"
    (i32.store8 offset=15 (local.get $sp) (i32.const 0))
    ;; greenlet.getcurrent().parent.switch(): the parent is main (id 0).
    (drop (call $switch (i32.const 0) (i32.const 0)))
    ;; g's stack must come back intact after a restore: trap if it did not.
    (if (i32.or
          (i32.ne (i32.load (local.get $sp)) (i32.const 0x63657073))
          (i32.or
            (i32.ne (i32.load offset=4 (local.get $sp)) (i32.const 0x2d6c6169))
            (i32.ne (i32.load offset=8 (local.get $sp)) (i32.const 0x74732d67))))
      (then unreachable))
    (call $print (i32.const 32) (i32.const 8))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16))))

  (func $run (export "run")
    (local $g i32)
    (local.set $g (call $spawn (i32.const 0) (i32.const 0) (i32.const 8192) (i32.const 4096)))
    (drop (call $switch (local.get $g) (i32.const 0)))
    (drop (call $yield (i32.const 0) (i32.const 0)))          ;; root.switch()
    (call $print (i32.const 48) (i32.const 2))
    (drop (call $switch (local.get $g) (i32.const 0)))
    (drop (call $yield (i32.const 0) (i32.const 0)))
    (call $print (i32.const 52) (i32.const 2))
    (drop (call $yield (i32.const 0) (i32.const 0)))
    (call $print (i32.const 56) (i32.const 2))))
