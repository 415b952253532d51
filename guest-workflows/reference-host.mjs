#!/usr/bin/env node
// A reference host for the guest ABI, to run the guests before the engine
// can: it instruments a module with Binaryen's Asyncify (the binaryen.js that
// AssemblyScript already brings), implements the `wasnap` imports and a
// minimal WASI preview 1, and restores every step into a fresh instance from
// a snapshot of memory, globals, the unwound stacks and the coroutine records.
// A guest that keeps any state elsewhere fails here.
//
//   node reference-host.mjs OUT_DIR [LANGUAGE...]
//
// Runs approval, greenlet and deploy of each OUT_DIR/<language>/ through the
// scenarios of SEED-DEMOS.md and deploy.expected.md and compares all stdout.
// This is a test tool, not the engine: no store, no files, no CLI.
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { randomFillSync } from "node:crypto";

const here = dirname(fileURLToPath(import.meta.url));
const binaryen = (await import(join(here, "assemblyscript/node_modules/binaryen/index.js"))).default;

const PAGE = 65536;
const UNWIND_PAGES = 4; // room for one unwound stack
const STACK_POINTER = "__stack_pointer";
const SUSPENDING = "wasnap.yield,wasnap.switch,wasnap.sleep,wasnap.yield_timeout";

// ---- Instrumentation: export what the host must reach, then Asyncify. ----
function instrument(bytes) {
  const m = binaryen.readBinary(bytes);
  m.setFeatures(binaryen.Features.All);
  const exported = new Map(); // internal name + kind -> export name
  for (let i = 0; i < m.getNumExports(); i++) {
    const e = binaryen.getExportInfo(m.getExportByIndex(i));
    exported.set(`${e.kind}:${e.value}`, e.name);
  }
  const globals = [];
  let stackPointer = null;
  for (let i = 0; i < m.getNumGlobals(); i++) {
    const g = binaryen.getGlobalInfo(m.getGlobalByIndex(i));
    if (g.module || !g.mutable) continue;
    let name = exported.get(`${binaryen.ExternalGlobal}:${g.name}`);
    if (!name) {
      name = `__ref_global_${i}`;
      m.addGlobalExport(g.name, name);
    }
    globals.push(name);
    if (g.name === STACK_POINTER || name === STACK_POINTER) stackPointer = name;
  }
  let table = null;
  if (m.getNumTables() > 0) {
    const t = binaryen.getTableInfo(m.getTableByIndex(0));
    table = exported.get(`${binaryen.ExternalTable}:${t.name}`);
    if (!table) m.addTableExport(t.name, (table = "__ref_table_0"));
  }
  let memory = exported.get(`${binaryen.ExternalMemory}:${m.getMemoryInfo().name ?? "0"}`);
  if (!memory) {
    memory = [...exported].find(([k]) => k.startsWith(`${binaryen.ExternalMemory}:`))?.[1];
  }
  if (!memory) throw new Error("module exports no memory");
  binaryen.setPassArgument("asyncify-imports", SUSPENDING);
  m.runPasses(["asyncify"]);
  if (!m.validate()) throw new Error("Asyncify produced an invalid module");
  const out = m.emitBinary();
  m.dispose();
  return { wasm: new WebAssembly.Module(out), globals, stackPointer, table, memory };
}

class ProcExit extends Error {
  constructor(code) { super(`proc_exit(${code})`); this.code = code; }
}

// ---- One workflow instance, restorable from a snapshot. ----
class Workflow {
  constructor(mod, out) {
    this.mod = mod;
    this.out = out; // collects stdout text
    this.coroutines = new Map([[0, { id: 0, parent: -1, started: false, sp: null, saved: null, resume: 0 }]]);
    this.current = 0;
    this.nextId = 1;
    this.reply = new Uint8Array(0);
    this.finished = false;
    this.instantiate();
  }

  instantiate() {
    const self = this;
    const mem = () => new Uint8Array(self.x.memory.buffer);
    const view = () => new DataView(self.x.memory.buffer);
    const suspend = (op) => {
      const base = self.x.memory.grow(UNWIND_PAGES) * PAGE;
      const dv = view();
      dv.setUint32(base, base + 8, true);
      dv.setUint32(base + 4, base + UNWIND_PAGES * PAGE, true);
      self.pending = { ...op, base };
      self.x.asyncify_start_unwind(base);
    };
    const rewound = () => { // true when this call is the end of a rewind
      if (self.x.asyncify_get_state() !== 2) return false;
      self.x.asyncify_stop_rewind();
      return true;
    };
    const wasnap = {
      yield(ptr, len) {
        if (rewound()) return self.coroutines.get(self.current).resume;
        suspend({ kind: "yield", value: mem().slice(ptr, ptr + len) });
        return 0;
      },
      sleep(_ms) { // the timer: every step here fires it at once
        if (rewound()) return;
        suspend({ kind: "yield", value: new Uint8Array(0) });
      },
      yield_timeout(ptr, len, _ms) { // -1 when resumed by its timer
        if (rewound()) return self.woken ? -1 : self.coroutines.get(self.current).resume;
        suspend({ kind: "yield", value: mem().slice(ptr, ptr + len) });
        return 0;
      },
      reply(ptr, cap) {
        const n = Math.min(cap, self.reply.length);
        mem().set(self.reply.subarray(0, n), ptr);
        return n;
      },
      spawn(func, arg, stackPtr, stackLen) {
        const id = self.nextId++;
        self.coroutines.set(id, { id, parent: self.current, func, arg, top: stackPtr + stackLen,
                                  started: false, sp: null, saved: null, resume: 0 });
        return id;
      },
      switch(id, value) {
        if (rewound()) return self.coroutines.get(self.current).resume;
        if (!self.coroutines.has(id)) throw new Error(`switch to unknown coroutine ${id}`);
        suspend({ kind: "switch", id, value });
        return 0;
      },
      current() { return self.current; },
      respond(ptr, len) {
        if (!self.handling) throw new Error("respond called outside a handler");
        self.result = mem().slice(ptr, ptr + len);
      },
      handler_name(ptr, cap) { // the name asked for; its whole length
        if (!self.handling) throw new Error("handler_name called outside a handler");
        const name = enc(self.handlerName);
        mem().set(name.subarray(0, Math.min(cap, name.length)), ptr);
        return name.length;
      },
      handler_fail(ptr, len) {
        if (!self.handling) throw new Error("handler_fail called outside a handler");
        throw new Error(`handler ${self.handlerName} failed: ${dec(mem().slice(ptr, ptr + len))}`);
      },
      patched() { return 1; }, // never replaying here: always the new path
    };
    const text = new TextDecoder();
    const wasi = {
      fd_write(fd, iovs, n, nwritten) {
        const dv = view();
        let total = 0;
        for (let i = 0; i < n; i++) {
          const p = dv.getUint32(iovs + 8 * i, true), l = dv.getUint32(iovs + 8 * i + 4, true);
          const chunk = text.decode(mem().slice(p, p + l));
          if (fd === 1) self.out.push(chunk); else if (fd === 2) process.stderr.write(chunk); else return 8;
          total += l;
        }
        dv.setUint32(nwritten, total, true);
        return 0;
      },
      proc_exit(code) { throw new ProcExit(code); },
      args_sizes_get(argc, size) { view().setUint32(argc, 0, true); view().setUint32(size, 0, true); return 0; },
      args_get() { return 0; },
      environ_sizes_get(n, size) { view().setUint32(n, 0, true); view().setUint32(size, 0, true); return 0; },
      environ_get() { return 0; },
      random_get(p, l) { randomFillSync(mem(), p, l); return 0; },
      clock_time_get(id, prec, p) { view().setBigUint64(p, process.hrtime.bigint(), true); return 0; },
      fd_fdstat_get(fd, p) { // stdio are character devices; no other fd is open
        if (fd > 2) return 8;
        mem().fill(0, p, p + 24);
        view().setUint8(p, 2);
        return 0;
      },
      fd_prestat_get() { return 8 }, // EBADF: no preopened directories
      fd_close() { return 8 },
      fd_seek() { return 70 }, // ESPIPE
      sched_yield() { return 0 },
    };
    const wasiProxy = new Proxy(wasi, { get: (t, k) => t[k] ?? (() => 52) }); // ENOSYS
    this.inst = new WebAssembly.Instance(this.mod.wasm, { wasnap, wasi_snapshot_preview1: wasiProxy });
    this.x = { ...this.inst.exports, memory: this.inst.exports[this.mod.memory] };
  }

  get sp() { return this.mod.stackPointer ? this.x[this.mod.stackPointer].value : null; }
  set sp(v) { if (this.mod.stackPointer && v !== null) this.x[this.mod.stackPointer].value = v; }

  // Run until the workflow yields (returns the value) or ends (returns null).
  // A reply of WAKE continues it as its timer firing.
  step(reply) {
    if (this.finished) throw new Error("the workflow has ended");
    this.woken = reply === WAKE;
    if (this.woken) reply = undefined;
    this.reply = reply ?? new Uint8Array(0);
    this.coroutines.get(this.current).resume = this.reply.length;
    for (;;) {
      const co = this.coroutines.get(this.current);
      if (co.started) this.sp = co.sp;
      else if (co.id !== 0) {
        if (!this.mod.stackPointer) throw new Error("spawn needs a __stack_pointer global");
        this.sp = co.top;
      }
      if (co.saved) { // put its unwound stack back and rewind into it
        const base = this.x.memory.grow(UNWIND_PAGES) * PAGE;
        new Uint8Array(this.x.memory.buffer).set(co.saved, base + 8);
        const dv = new DataView(this.x.memory.buffer);
        dv.setUint32(base, base + 8 + co.saved.length, true);
        dv.setUint32(base + 4, base + UNWIND_PAGES * PAGE, true);
        co.saved = null;
        this.x.asyncify_start_rewind(base);
      }
      co.started = true;
      this.pending = null;
      let exited = false;
      try {
        if (co.id === 0) (this.x._start ?? this.x.run)();
        else this.x[this.mod.table].get(co.func)(co.arg);
      } catch (e) {
        if (!(e instanceof ProcExit)) throw e;
        if (e.code !== 0) throw new Error(`the workflow exited with status ${e.code}`);
        exited = true;
      }
      if (!exited && this.x.asyncify_get_state() === 1) {
        this.x.asyncify_stop_unwind();
        const { base } = this.pending;
        const end = new DataView(this.x.memory.buffer).getUint32(base, true);
        co.saved = new Uint8Array(this.x.memory.buffer).slice(base + 8, end);
        co.sp = this.sp;
        if (this.pending.kind === "yield") return this.pending.value;
        const target = this.coroutines.get(this.pending.id);
        target.resume = this.pending.value;
        this.current = target.id;
        continue;
      }
      if (co.id === 0 || exited) { this.finished = true; return null; }
      co.done = true; // a coroutine returned: its parent's switch returns 0
      const parent = this.coroutines.get(co.parent);
      parent.resume = 0;
      this.current = parent.id;
    }
  }

  // Call the handler export `query_NAME`/`update_NAME` on the suspended
  // state, with the shadow stack where main left it; returns its result.
  // Calls the handler `exportName` (query_NAME or update_NAME), or the
  // module's query_* / update_* for any name when it has no such export.
  handle(exportName, arg) {
    const saved = this.sp;
    const main = this.coroutines.get(0);
    if (main.started && main.sp !== null) this.sp = main.sp;
    const reply = this.reply;
    const [kind, handlerName] = exportName.split(/_(.*)/s);
    const handler = this.x[exportName] ?? this.x[`${kind}_*`];
    Object.assign(this, { reply: enc(arg), handling: true, handlerName, result: new Uint8Array(0) });
    try { handler(); } finally {
      Object.assign(this, { reply, handling: false });
      this.sp = saved;
    }
    return dec(this.result);
  }

  snapshot() {
    return {
      memory: new Uint8Array(this.x.memory.buffer).slice(),
      globals: this.mod.globals.map((g) => this.x[g].value),
      host: structuredClone({ coroutines: [...this.coroutines], current: this.current,
                              nextId: this.nextId, finished: this.finished }),
    };
  }

  static restore(mod, snap, out) {
    const w = new Workflow(mod, out);
    const pages = snap.memory.length / PAGE - w.x.memory.buffer.byteLength / PAGE;
    if (pages > 0) w.x.memory.grow(pages);
    new Uint8Array(w.x.memory.buffer).set(snap.memory);
    mod.globals.forEach((g, i) => { w.x[g].value = snap.globals[i]; });
    const h = structuredClone(snap.host);
    w.coroutines = new Map(h.coroutines);
    Object.assign(w, { current: h.current, nextId: h.nextId, finished: h.finished });
    return w;
  }
}

// ---- The scenarios ----
const WAKE = Symbol("the timer fires");
const enc = (s) => new TextEncoder().encode(s);
const dec = (b) => new TextDecoder().decode(b);

// Every step in a fresh instance restored from the previous step's snapshot,
// as if each were a new process. Yielded values print as lines; empty ones
// print nothing. With untilEnd, steps go on without replies once `replies`
// runs out, until the workflow ends.
function runSteps(mod, out, snap, replies, untilEnd = false) {
  let w = snap ? Workflow.restore(mod, snap, out) : new Workflow(mod, out);
  let value = w.step(snap ? replies.shift() : undefined);
  const versions = [];
  for (;;) {
    if (value === null) return versions;
    if (value.length) out.push(dec(value) + "\n");
    const s = w.snapshot();
    versions.push(s);
    if (!replies.length && !untilEnd) return versions;
    w = Workflow.restore(mod, s, out);
    value = w.step(replies.shift());
  }
}

function approval(mod) {
  const out = [];
  const v = runSteps(mod, out, null, [undefined, enc("true"), undefined]);
  const v2 = v[1]; // waiting at "ask boss for permission"
  out.push(`status: ${Workflow.restore(mod, v2, out).handle("query_status", "")}\n`);
  runSteps(mod, out, v2, [enc("false"), undefined]);
  return out.join("");
}
const APPROVAL = "do something\nask boss for permission\ndo another after approved\n"
  + "status: ask boss for permission\ndo another after rejected\n";

function greenlet(mod) {
  const out = [];
  const [v1] = runSteps(mod, out, null, []);
  const found = Buffer.from(v1.memory).includes("special-g-stack");
  out.push(`is greenlet g also pickled? ${found ? "True" : "False"}\n`);
  const [v2, v3] = runSteps(mod, out, v1, [undefined, undefined]);
  runSteps(mod, out, v1, [undefined]);            // a branch from v1
  const end = runSteps(mod, out, v3, [undefined]); // to the end
  if (end.length !== 0) out.push("(the workflow did not end after c)\n");
  void v2;
  return out.join("");
}
const GREENLET = "enter g\nis greenlet g also pickled? True\na\nleave g\nb\na\nleave g\nc\n";

// The scenarios of deploy.expected.md: a heading with "(replies: ...)" and,
// before the next heading, a last code block with all stdout.
function deployScenarios() {
  const md = readFileSync(join(here, "deploy.expected.md"), "utf8");
  const scenarios = [];
  for (const section of md.split(/^### /m).slice(1)) {
    const m = section.split("\n")[0].match(/^(.*?)\(replies: (.*)\)\s*$/);
    if (!m) continue;
    const blocks = [...section.matchAll(/```\n([\s\S]*?)```/g)];
    const replies = m[2].split(",").map((r) => r.trim())
      .map((r) => (r === "-" ? undefined : r === "(timer)" ? WAKE : enc(r)));
    scenarios.push({ name: m[1].trim(), replies, expected: blocks[blocks.length - 1][1] });
  }
  return scenarios;
}

function deploy(mod, scenario) {
  const out = [];
  runSteps(mod, out, null, [...scenario.replies], true);
  return out.join("");
}

// While it waits for approval, the deploy is changed to 4 machines (an
// update: a new snapshot of the same suspension), then approved; its
// maintenance window's timer fires.
function deployUpdated(mod) {
  const out = [];
  const [waiting] = runSteps(mod, out, null, []);
  const w = Workflow.restore(mod, waiting, out);
  out.push(`update: ${w.handle("update_machines", "4")}\n`);
  out.push(`status: ${w.handle("query_status", "")}\n`);
  runSteps(mod, out, w.snapshot(), [enc("yes"), WAKE, ...["ok", "ok", "ok", "ok"].map(enc)], true);
  return out.join("");
}
const DEPLOY_UPDATED = "building release\nwaiting for approval [yes/no]\nupdate: machines = 4\n"
  + "status: waiting for approval [yes/no] (0 of 4 machines done)\n"
  + "waiting for the maintenance window\n"
  + [1, 2, 3, 4].map((k) => `deploying to machine-${k}\n`).join("") + "deployed to 4 machines\n";

// ---- Main ----
const [outDir, ...only] = process.argv.slice(2);
if (!outDir) { console.error("usage: node reference-host.mjs OUT_DIR [LANGUAGE...]"); process.exit(2); }
const languages = only.length ? only
  : readdirSync(outDir, { withFileTypes: true }).filter((d) => d.isDirectory() && !d.name.startsWith("."))
      .map((d) => d.name).sort();
let failures = 0;
const check = (label, got, want) => {
  if (got === want) { console.log(`ok   ${label}`); return; }
  failures++;
  console.log(`FAIL ${label}\n--- expected\n${want}--- got\n${got}---`);
};
for (const lang of languages) {
  const load = (name) => {
    const f = join(outDir, lang, `${name}.wasm`);
    return existsSync(f) ? instrument(readFileSync(f)) : null;
  };
  const run = (label, fn) => {
    try { fn(); } catch (e) { failures++; console.log(`FAIL ${label}: ${e.stack ?? e}`); }
  };
  run(`${lang}/approval`, () => check(`${lang}/approval`, approval(load("approval")), APPROVAL));
  run(`${lang}/greenlet`, () => check(`${lang}/greenlet`, greenlet(load("greenlet")), GREENLET));
  run(`${lang}/deploy`, () => {
    const mod = load("deploy");
    for (const s of deployScenarios()) check(`${lang}/deploy: ${s.name}`, deploy(mod, s), s.expected);
    check(`${lang}/deploy: updated to 4 machines while waiting`, deployUpdated(mod), DEPLOY_UPDATED);
  });
}
if (failures) { console.log(`reference-host: ${failures} failure(s)`); process.exit(1); }
