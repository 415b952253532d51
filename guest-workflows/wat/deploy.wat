;; The deploy workflow (see ../deploy.expected.md), written by hand against
;; the wasnap ABI: build, ask for approval with a deadline (escalate when it
;; passes), sleep until the maintenance window, roll out to 3 machines one
;; step at a time, and roll back the machines already done if one fails. The
;; query `status` says what it waits for and how far it is; the update
;; `machines` changes how many machines it rolls out to (1 to 9).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
  (import "wasnap" "reply" (func $reply (param i32 i32) (result i32)))
  (import "wasnap" "respond" (func $respond (param i32 i32)))
  (import "wasnap" "sleep" (func $sleep (param i64)))
  (import "wasnap" "yield_timeout"
    (func $yield_timeout (param i32 i32 i64) (result i32)))

  (memory (export "memory") 1)

  ;; What the handlers read and change: globals and memory, never the
  ;; suspended frames' locals.
  (global $machines (mut i32) (i32.const 3))
  (global $deployed (mut i32) (i32.const 0))
  (global $status_ptr (mut i32) (i32.const 160))
  (global $status_len (mut i32) (i32.const 16))
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
  (data (i32.const 224) "deployment not approved\n")              ;; 24
  (data (i32.const 256) "deploying to machine-?")                 ;; 22, digit at 277
  (data (i32.const 288) "rolling back machine-?")                 ;; 22, digit at 309
  (data (i32.const 320) "rolled back after machine-? failed\n")   ;; 35, digit at 346
  (data (i32.const 368) "deployed to ? machines\n")               ;; 23, digit at 380
  (data (i32.const 400) "deployed")                               ;; 8
  (data (i32.const 416) " (? of ? machines done)")                ;; 23, digits at 418, 423
  (data (i32.const 448) "machines = ?")                           ;; 12, digit at 459
  (data (i32.const 464) "refused: give 1 to 9, no fewer than the machines done") ;; 53
  (data (i32.const 1024) "no answer within 3 days: escalating\n") ;; 36
  (data (i32.const 1072) "waiting for approval from the release manager [yes/no]") ;; 54
  (data (i32.const 1136) "waiting for the maintenance window\n")  ;; 35 (34 as a status)
  ;; 512..640: the status text a query composes; 640..648: an update's argument.

  (func $set_status (param $ptr i32) (param $len i32)
    (global.set $status_ptr (local.get $ptr))
    (global.set $status_len (local.get $len)))

  ;; "<status> (D of M machines done)"
  (func (export "query_status")
    (memory.copy (i32.const 512) (global.get $status_ptr) (global.get $status_len))
    (i32.store8 (i32.const 418) (i32.add (i32.const 48) (global.get $deployed)))
    (i32.store8 (i32.const 423) (i32.add (i32.const 48) (global.get $machines)))
    (memory.copy (i32.add (i32.const 512) (global.get $status_len)) (i32.const 416) (i32.const 23))
    (call $respond (i32.const 512) (i32.add (global.get $status_len) (i32.const 23))))

  ;; The argument is one digit, at least the machines done and at least 1.
  (func (export "update_machines")
    (local $n i32) (local $len i32)
    (local.set $len (call $reply (i32.const 640) (i32.const 8)))
    (local.set $n (i32.sub (i32.load8_u (i32.const 640)) (i32.const 48)))
    (if (i32.or
          (i32.ne (local.get $len) (i32.const 1))
          (i32.or (i32.gt_u (local.get $n) (i32.const 9))
                  (i32.or (i32.eqz (local.get $n))
                          (i32.lt_u (local.get $n) (global.get $deployed)))))
      (then
        (call $respond (i32.const 464) (i32.const 53))
        (return)))
    (global.set $machines (local.get $n))
    (i32.store8 (i32.const 459) (i32.add (i32.const 48) (local.get $n)))
    (call $respond (i32.const 448) (i32.const 12)))

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
    (call $set_status (local.get $msg) (i32.const 22))
    (call $yield (local.get $msg) (i32.const 22)))

  (func $run (export "run")
    (local $len i32) (local $k i32) (local $j i32)
    (call $print (i32.const 160) (i32.const 17))
    (call $set_status (i32.const 192) (i32.const 29))
    (local.set $len
      (call $yield_timeout (i32.const 192) (i32.const 29) (global.get $approval_deadline_ms)))
    (if (i32.lt_s (local.get $len) (i32.const 0))
      (then
        (call $print (i32.const 1024) (i32.const 36))
        (call $set_status (i32.const 1072) (i32.const 54))
        (local.set $len (call $yield (i32.const 1072) (i32.const 54)))))
    (if (i32.eqz (call $reply_is (local.get $len) (i32.const 128) (i32.const 3)))
      (then
        (call $print (i32.const 224) (i32.const 24))
        (return)))
    (call $print (i32.const 1136) (i32.const 35))
    (call $set_status (i32.const 1136) (i32.const 34))
    (call $sleep (global.get $maintenance_window_ms))
    (local.set $k (i32.const 1))
    (loop $rollout
      (local.set $len (call $yield_machine (i32.const 256) (local.get $k)))
      (if (call $reply_is (local.get $len) (i32.const 136) (i32.const 4))
        (then
          ;; Undo the machines already done, newest first.
          (local.set $j (i32.sub (local.get $k) (i32.const 1)))
          (block $undone
            (loop $rollback
              (br_if $undone (i32.eqz (local.get $j)))
              (global.set $deployed (i32.sub (local.get $j) (i32.const 1)))
              (drop (call $yield_machine (i32.const 288) (local.get $j)))
              (local.set $j (i32.sub (local.get $j) (i32.const 1)))
              (br $rollback)))
          (i32.store8 (i32.const 346) (i32.add (i32.const 48) (local.get $k)))
          (call $print (i32.const 320) (i32.const 35))
          (return)))
      (global.set $deployed (local.get $k))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $rollout (i32.le_u (local.get $k) (global.get $machines))))
    (call $set_status (i32.const 400) (i32.const 8))
    (i32.store8 (i32.const 380) (i32.add (i32.const 48) (global.get $machines)))
    (call $print (i32.const 368) (i32.const 23))))
