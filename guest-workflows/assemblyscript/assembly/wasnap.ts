// Write wasnap workflows in AssemblyScript.
//
// A workflow is an exported `run()` function (the engine calls `run` when a
// module has no `_start`). Output goes straight to WASI's fd_write, so
// nothing waits in a buffer when the workflow suspends (the process may end
// there).
//
// Coroutines need `--runtime stub` (spawn refuses to compile otherwise). The
// default incremental GC keeps its roots on a shadow stack of its own,
// `~lib/memory/__stack_pointer`, one region below the heap, and scans only
// from that pointer up to `__heap_base`. Coroutines would interleave their
// frames on that one region, and a coroutine's own stack, which lives in the
// heap, would never be scanned: objects still in use would be freed. The stub
// runtime never collects, so it has neither problem.
//
// AssemblyScript keeps every local in a Wasm local, never in linear memory.
// Data that must live on a coroutine's own stack (greenlet's `mystack`) is
// put there explicitly with stackAlloc/stackRestore, on the shadow stack this
// module exports as `__stack_pointer`: the engine points it at the top of a
// coroutine's stack when the coroutine first runs. The entry file must
// re-export it: `export { __stack_pointer } from "./wasnap";`.

import { Runtime } from "shared/runtime";

// ---- The raw ABI: all i32, pointers are offsets into memory 0. ----

// Publish [ptr, ptr+len) and suspend the workflow; returns the length of the
// reply it is resumed with (0 when none).
@external("wasnap", "yield")
declare function rawYield(ptr: usize, len: i32): i32;
// Copy up to cap bytes of the latest reply to ptr; returns the number copied.
@external("wasnap", "reply")
declare function rawReply(ptr: usize, cap: i32): i32;
// New coroutine running table0[func](arg) on [stackPtr, stackPtr+stackLen).
@external("wasnap", "spawn")
declare function rawSpawn(func: i32, arg: i32, stackPtr: usize, stackLen: i32): i32;
// Suspend the running coroutine and run coroutine id (0 = main).
@external("wasnap", "switch")
declare function rawSwitch(id: i32, value: i32): i32;
// Id of the running coroutine.
@external("wasnap", "current")
declare function rawCurrent(): i32;
// In a query or update handler: the handler's result becomes [ptr, ptr+len).
@external("wasnap", "respond")
declare function rawRespond(ptr: usize, len: i32): void;
// 1 when the code should take the patch named [ptr, ptr+len) (see patched).
@external("wasnap", "patched")
declare function rawPatched(ptr: usize, len: i32): i32;

@external("wasnap", "sleep")
declare function rawSleep(ms: i64): void;

@external("wasnap", "yield_timeout")
declare function rawYieldTimeout(ptr: usize, len: i32, ms: i64): i32;

@external("wasi_snapshot_preview1", "fd_write")
declare function fd_write(fd: i32, iovs: usize, iovsLen: i32, nwritten: usize): i32;

// ---- Output ----

function writeFd(fd: i32, text: string): void {
  const bytes = String.UTF8.encode(text);
  let ptr = changetype<usize>(bytes);
  let left = bytes.byteLength;
  const iov = new ArrayBuffer(12); // one iovec (base, len), then nwritten
  const iovPtr = changetype<usize>(iov);
  while (left > 0) {
    store<u32>(iovPtr, <u32>ptr);
    store<u32>(iovPtr, <u32>left, 4);
    if (fd_write(fd, iovPtr, 1, iovPtr + 8) != 0) return;
    const written = load<u32>(iovPtr, 8);
    if (written == 0) return;
    ptr += written;
    left -= <i32>written;
  }
}

/** Write text to stdout, unbuffered. */
export function print(text: string): void {
  writeFd(1, text);
}

/** Abort handler (`--use abort=assembly/wasnap/abort`): the message goes to
 * stderr and the module traps, instead of importing env.abort, which no
 * wasnap host provides. */
export function abort(message: string | null = null, fileName: string | null = null, line: u32 = 0, column: u32 = 0): void {
  writeFd(2, "abort: " + (message ? message : "") + " at " + (fileName ? fileName : "?") +
    ":" + line.toString() + ":" + column.toString() + "\n");
  unreachable();
}

// ---- Yielding ----

function readReply(len: i32): string {
  if (len <= 0) return "";
  const buf = new ArrayBuffer(len);
  const got = rawReply(changetype<usize>(buf), len);
  return String.UTF8.decodeUnsafe(changetype<usize>(buf), <usize>min(max(got, 0), len));
}

/** Publish `value` (as UTF-8) and suspend the workflow; returns the reply it
 * is resumed with ("" when none). */
export function yieldStr(value: string): string {
  const bytes = String.UTF8.encode(value);
  return readReply(rawYield(changetype<usize>(bytes), bytes.byteLength));
}

/** Suspend the workflow for `ms` milliseconds: a durable timer, kept with
 * the saved version, that a service fires even after a restart. */
export function sleep(ms: i64): void {
  rawSleep(ms);
}

/** A question with a deadline: publishes `value` and waits at most `ms`
 * milliseconds for the reply; null when the deadline passed first. */
export function yieldStrTimeout(value: string, ms: i64): string | null {
  const bytes = String.UTF8.encode(value);
  const len = rawYieldTimeout(changetype<usize>(bytes), bytes.byteLength, ms);
  if (len < 0) return null;
  return readReply(len);
}

// ---- Queries and updates ----
//
// A handler is an exported function of no arguments named query_NAME or
// update_NAME, run on the suspended workflow's state (`wasnap query` /
// `wasnap update`); it must not yield, switch or spawn. The workflow's
// locals live in its suspended frames, so keep what handlers read or change
// in module-level variables:
//
//     let status = "starting";
//     export function query_status(): void { respond(status); }

/** In a handler: its argument, as text. */
export function handlerArg(): string {
  let cap = 64;
  let buf = new Uint8Array(cap);
  let got = rawReply(buf.dataStart, cap);
  while (got >= cap) { // it may be longer: ask again with more room
    cap *= 4;
    buf = new Uint8Array(cap);
    got = rawReply(buf.dataStart, cap);
  }
  return String.UTF8.decodeUnsafe(buf.dataStart, max(got, 0));
}

/** In a handler: its result. */
export function respond(text: string): void {
  const bytes = String.UTF8.encode(text);
  rawRespond(changetype<usize>(bytes), bytes.byteLength);
}

/** Whether the code should take the patch named `id`, for changes that
 * `wasnap upgrade` must replay: true when running normally (and that is
 * recorded), and while replaying true only where the recorded run took the
 * patch too. Old histories keep the old path; everything after them takes
 * the new one: `if (patched("notify-on-start")) notify();` */
export function patched(id: string): bool {
  const bytes = String.UTF8.encode(id);
  return rawPatched(changetype<usize>(bytes), bytes.byteLength) != 0;
}

/** Publish raw bytes; returns the reply's bytes. */
export function yieldBytes(value: Uint8Array): Uint8Array {
  const len = rawYield(value.dataStart, value.byteLength);
  const reply = new Uint8Array(max(len, 0));
  if (len > 0) rawReply(reply.dataStart, len);
  return reply;
}

/** A bare suspension (greenlet's root.switch()): an empty value, which the
 * host prints as nothing; any reply is ignored. */
export function suspend(): void {
  rawYield(0, 0);
}

// ---- The shadow stack ----

/** The shadow-stack pointer (stacks grow down). Exported by the entry file
 * so that the engine can set it for each coroutine; 0 until main first
 * needs a stack. */
export let __stack_pointer: usize = 0;

const MAIN_STACK_SIZE: usize = 64 * 1024;

/** Reserve `size` bytes on the running coroutine's own stack; release them
 * with stackRestore(stackSave()) taken before. */
export function stackAlloc(size: usize): usize {
  if (__stack_pointer == 0) {
    // main's stack, made on first use
    __stack_pointer = alignedAlloc(MAIN_STACK_SIZE) + MAIN_STACK_SIZE;
  }
  __stack_pointer = (__stack_pointer - size) & ~(<usize>15);
  return __stack_pointer;
}

export function stackSave(): usize {
  return __stack_pointer;
}

export function stackRestore(saved: usize): void {
  __stack_pointer = saved;
}

/** `size` bytes from the heap, 16-byte aligned (the stub runtime's
 * heap.alloc aligns less), never freed. */
function alignedAlloc(size: usize): usize {
  return (heap.alloc(size + 15) + 15) & ~(<usize>15);
}

// ---- Coroutines ----

/** A coroutine made by spawn; its stack is never freed (the stub runtime
 * does not free). */
export class Coroutine {
  id: i32 = 0;
  /** The coroutine that spawned it; it resumes when the body returns. */
  parent: i32 = 0;
  done: bool = false;
  constructor(public body: () => void) {}

  /** Run this coroutine (greenlet.switch()); returns what the running
   * coroutine is resumed with, 0 when this one has returned. */
  switchInto(value: i32): i32 {
    return switchTo(this.id, value);
  }
}

const coroutines = new Array<Coroutine>();

/** Every coroutine starts here: spawn takes the table index of a function
 * of type (i32) -> (), and its argument is the Coroutine. */
function trampoline(arg: i32): void {
  const co = changetype<Coroutine>(<usize>arg);
  const body = co.body;
  body();
  co.done = true;
}

/** A new coroutine that will run `body` (a function, not a closure: the
 * language has none) on a fresh stack of `stackSize` bytes. It starts at the
 * first switch into it; its parent is the running coroutine. */
export function spawn(body: () => void, stackSize: i32): Coroutine {
  if (ASC_RUNTIME != Runtime.Stub) {
    ERROR("wasnap coroutines need --runtime stub: the GC cannot see a coroutine's stack");
  }
  const size = (<usize>max(stackSize, 16) + 15) & ~(<usize>15);
  const stack = alignedAlloc(size);
  const co = new Coroutine(body);
  co.parent = current();
  const entry = trampoline;
  co.id = rawSpawn(entry.index, <i32>changetype<usize>(co), stack, <i32>size);
  coroutines.push(co);
  return co;
}

/** Id of the running coroutine (0 is the workflow's main). */
export function current(): i32 {
  return rawCurrent();
}

/** Suspend the running coroutine and run coroutine id (0 = main), whose
 * pending switch returns value. */
export function switchTo(id: i32, value: i32): i32 {
  return rawSwitch(id, value);
}

/** The parent of the running coroutine, -1 in main. */
export function parent(): i32 {
  const me = current();
  for (let i = 0; i < coroutines.length; i++) {
    if (coroutines[i].id == me) return coroutines[i].parent;
  }
  return -1;
}

/** greenlet.getcurrent().parent.switch(value); main has no parent. */
export function switchToParent(value: i32): i32 {
  const p = parent();
  if (p < 0) abort("the workflow's main has no parent coroutine", null, 0, 0);
  return switchTo(p, value);
}
