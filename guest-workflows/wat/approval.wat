;; The article's approval workflow, written by hand against the wasnap ABI.
;; No WASI: everything it says, it says through `yield`.
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func $reply (param i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 16)  "do something")                ;; 12 bytes
  (data (i32.const 32)  "ask boss for permission")     ;; 23 bytes
  (data (i32.const 64)  "do another after approved")   ;; 25 bytes
  (data (i32.const 96)  "do another after rejected")   ;; 25 bytes
  (data (i32.const 128) "true")                        ;; 4 bytes

  ;; The reply is copied here; only its first 4 bytes matter, since any
  ;; reply longer than "true" is a rejection anyway.
  (global $reply_buf i32 (i32.const 256))

  ;; 1 when the latest reply (of length $len) is exactly "true".
  (func $reply_is_true (param $len i32) (result i32)
    (if (i32.ne (local.get $len) (i32.const 4))
      (then (return (i32.const 0))))
    (drop (call $reply (global.get $reply_buf) (i32.const 4)))
    (i32.eq (i32.load (global.get $reply_buf)) (i32.load (i32.const 128))))

  (func $run (export "run")
    (local $len i32)
    (drop (call $yield (i32.const 16) (i32.const 12)))
    ;; The answer to the second question decides the branch.
    (local.set $len (call $yield (i32.const 32) (i32.const 23)))
    (if (call $reply_is_true (local.get $len))
      (then (drop (call $yield (i32.const 64) (i32.const 25))))
      (else (drop (call $yield (i32.const 96) (i32.const 25)))))))
