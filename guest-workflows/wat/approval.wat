;; The article's approval workflow, written by hand against the wasnap ABI.
;; No WASI: everything it says, it says through `yield`. The query handler
;; `query_status` answers what it waits for.
(module
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func $reply (param i32 i32) (result i32)))
  (import "wasnap" "respond" (func $respond (param i32 i32)))

  (memory (export "memory") 1)

  (data (i32.const 16)  "do something")                ;; 12 bytes
  (data (i32.const 32)  "ask boss for permission")     ;; 23 bytes
  (data (i32.const 64)  "do another after approved")   ;; 25 bytes
  (data (i32.const 96)  "do another after rejected")   ;; 25 bytes
  (data (i32.const 128) "true")                        ;; 4 bytes
  (data (i32.const 144) "starting")                    ;; 8 bytes

  ;; What the workflow waits for: the last question it asked. Handlers read
  ;; globals and memory, never the suspended frames' locals.
  (global $status_ptr (mut i32) (i32.const 144))
  (global $status_len (mut i32) (i32.const 8))

  ;; Yield a question, remembering it as the status.
  (func $ask (param $ptr i32) (param $len i32) (result i32)
    (global.set $status_ptr (local.get $ptr))
    (global.set $status_len (local.get $len))
    (call $yield (local.get $ptr) (local.get $len)))

  (func (export "query_status")
    (call $respond (global.get $status_ptr) (global.get $status_len)))

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
    (drop (call $ask (i32.const 16) (i32.const 12)))
    ;; The answer to the second question decides the branch.
    (local.set $len (call $ask (i32.const 32) (i32.const 23)))
    (if (call $reply_is_true (local.get $len))
      (then (drop (call $ask (i32.const 64) (i32.const 25))))
      (else (drop (call $ask (i32.const 96) (i32.const 25)))))))
