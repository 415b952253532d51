;; The deploy workflow (see ../deploy.expected.md), written by hand against
;; the wasnap ABI: build, ask for approval with a deadline (escalate when it
;; passes), sleep until the maintenance window, roll out to 3 machines one
;; step at a time, and roll back the machines already done if one fails.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func $reply (param i32 i32) (result i32)))
  (import "wasnap" "sleep" (func $sleep (param i64)))
  (import "wasnap" "yield_timeout"
    (func $yield_timeout (param i32 i32 i64) (result i32)))

  (memory (export "memory") 1)

  (global $machines i32 (i32.const 3))
  ;; Approve within 3 days, else the question goes to the release manager.
  (global $approval_deadline_ms i64 (i64.const 259200000))
  ;; The maintenance window opens 2 s after the approval.
  (global $maintenance_window_ms i64 (i64.const 2000))

  ;; 64..72: one iovec for fd_write; 72..76: its byte count.
  ;; 96..128: the latest reply (only short replies can match anything).
  (data (i32.const 128) "yes")
  (data (i32.const 136) "fail")
  (data (i32.const 160) "building release\n")                     ;; 17
  (data (i32.const 192) "waiting for approval [yes/no]")          ;; 29
  (data (i32.const 224) "no answer within 3 days: escalating\n")  ;; 36
  (data (i32.const 272) "waiting for approval from the release manager [yes/no]") ;; 54
  (data (i32.const 336) "deployment not approved\n")              ;; 24
  (data (i32.const 368) "waiting for the maintenance window\n")   ;; 35
  (data (i32.const 416) "deploying to machine-?")                 ;; 22, digit at 437
  (data (i32.const 448) "rolling back machine-?")                 ;; 22, digit at 469
  (data (i32.const 480) "rolled back after machine-? failed\n")   ;; 35, digit at 506
  (data (i32.const 528) "deployed to 3 machines\n")               ;; 23

  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 64) (local.get $ptr))
    (i32.store (i32.const 68) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 72))))

  ;; 1 when the latest reply, of length $len, is exactly the $n bytes at $s.
  (func $reply_is (param $len i32) (param $s i32) (param $n i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $len) (local.get $n))
      (then (return (i32.const 0))))
    (drop (call $reply (i32.const 96) (local.get $n)))
    (loop $next
      (if (i32.ge_u (local.get $i) (local.get $n))
        (then (return (i32.const 1))))                     ;; all equal
      (if (i32.ne (i32.load8_u offset=96 (local.get $i))
                  (i32.load8_u (i32.add (local.get $s) (local.get $i))))
        (then (return (i32.const 0))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))
    (unreachable))

  ;; Yield a 22-byte message whose last byte is the digit of machine $k.
  (func $yield_machine (param $msg i32) (param $k i32) (result i32)
    (i32.store8 offset=21 (local.get $msg) (i32.add (i32.const 48) (local.get $k)))
    (call $yield (local.get $msg) (i32.const 22)))

  (func $run (export "run")
    (local $len i32) (local $k i32) (local $j i32)
    (call $print (i32.const 160) (i32.const 17))
    (local.set $len
      (call $yield_timeout (i32.const 192) (i32.const 29) (global.get $approval_deadline_ms)))
    (if (i32.lt_s (local.get $len) (i32.const 0))
      (then
        (call $print (i32.const 224) (i32.const 36))
        (local.set $len (call $yield (i32.const 272) (i32.const 54)))))
    (if (i32.eqz (call $reply_is (local.get $len) (i32.const 128) (i32.const 3)))
      (then
        (call $print (i32.const 336) (i32.const 24))
        (return)))
    (call $print (i32.const 368) (i32.const 35))
    (call $sleep (global.get $maintenance_window_ms))
    (local.set $k (i32.const 1))
    (loop $rollout
      (local.set $len (call $yield_machine (i32.const 416) (local.get $k)))
      (if (call $reply_is (local.get $len) (i32.const 136) (i32.const 4))
        (then
          ;; Undo the machines already done, newest first.
          (local.set $j (i32.sub (local.get $k) (i32.const 1)))
          (block $undone
            (loop $rollback
              (br_if $undone (i32.eqz (local.get $j)))
              (drop (call $yield_machine (i32.const 448) (local.get $j)))
              (local.set $j (i32.sub (local.get $j) (i32.const 1)))
              (br $rollback)))
          (i32.store8 (i32.const 506) (i32.add (i32.const 48) (local.get $k)))
          (call $print (i32.const 480) (i32.const 35))
          (return)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $rollout (i32.le_u (local.get $k) (global.get $machines))))
    (call $print (i32.const 528) (i32.const 23))))
