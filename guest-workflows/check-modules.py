#!/usr/bin/env python3
"""Check that built guest modules follow the wasnap guest ABI (DESIGN.md).

Usage: check-modules.py OUT_DIR      (checks OUT_DIR/<language>/<name>.wasm)
       check-modules.py FILE.wasm...
       check-modules.py --self-test DIR   (DIR/*.wat, assembled with wat2wasm,
                                           each rejected as its `;; expect:`
                                           line says, or accepted)

For every module:
  * imports come only from `wasnap` and `wasi_snapshot_preview1`, and from
    `wasnap` only the ABI functions, each with its exact type;
  * it defines memory 0 (all ABI pointers point into it);
  * it exports `_start` or `run`, of type () -> ();
  * every export named `query_NAME` or `update_NAME` (a handler; `query_*`
    and `update_*` answer any name) is a function of type () -> (), and a
    module with handlers imports `respond`.
For every module that imports `spawn`:
  * table 0 exists and holds a function of type (i32) -> () (a coroutine
    entry point: spawn runs table0[func](arg));
  * a mutable i32 global `__stack_pointer` is named (name section or export),
    since the engine sets it to the top of a coroutine's own stack.
By demo name:
  * approval, deploy: import `yield`, `reply` and `respond`, export the
    query handler `query_status`, and deploy the update `update_machines`;
  * greenlet: imports `yield`, `spawn`, `switch`, and the bytes
    `special-g-stack` are nowhere in the module, so that finding them in a
    snapshot proves that g's stack was saved.

Exits 1 naming each problem. Only the Python standard library is used.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

ABI = {  # name -> (params, results): pointers, lengths and ids are i32
    "yield": (("i32", "i32"), ("i32",)),
    "reply": (("i32", "i32"), ("i32",)),
    "spawn": (("i32", "i32", "i32", "i32"), ("i32",)),
    "switch": (("i32", "i32"), ("i32",)),
    "current": ((), ("i32",)),
    "sleep": (("i64",), ()),                       # milliseconds
    "yield_timeout": (("i32", "i32", "i64"), ("i32",)),
    "respond": (("i32", "i32"), ()),
    "handler_name": (("i32", "i32"), ("i32",)),
    "handler_fail": (("i32", "i32"), ()),
    "patched": (("i32", "i32"), ("i32",)),
}
ALLOWED_MODULES = {"wasnap", "wasi_snapshot_preview1"}
VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
            0x70: "funcref", 0x6F: "externref"}


class Reader:
    def __init__(self, data, pos=0, end=None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def byte(self):
        if self.pos >= self.end:
            raise ValueError("unexpected end of section")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def sleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result

    def bytes(self, n):
        if self.pos + n > self.end:
            raise ValueError("unexpected end of section")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def name(self):
        return self.bytes(self.uleb()).decode("utf-8")

    def valtype(self):
        b = self.byte()
        if b in (0x63, 0x64):  # (ref null? heaptype)
            self.sleb()
            return "ref"
        return VALTYPES.get(b, hex(b))

    def limits(self):
        flags = self.byte()
        lo = self.uleb()
        hi = self.uleb() if flags & 1 else None
        return lo, hi

    def const_expr(self):
        """A constant expression; returns the function index of a ref.func."""
        func = None
        while True:
            op = self.byte()
            if op == 0x0B:
                return func
            if op in (0x41, 0x42):
                self.sleb()
            elif op == 0x23:
                self.uleb()
            elif op == 0xD2:
                func = self.uleb()
            elif op == 0xD0:
                self.byte()
            elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):
                pass  # extended-const arithmetic
            else:
                raise ValueError(f"unsupported opcode {op:#x} in constant expression")


def parse(data):
    if data[:4] != b"\0asm" or data[4:8] != b"\1\0\0\0":
        raise ValueError("not a core WebAssembly module")
    m = {"types": [], "imports": [], "funcs": [], "tables": [], "memories": 0,
         "globals": [], "exports": {}, "elems": [], "func_names": {}, "global_names": {}}
    r = Reader(data, 8)
    while r.pos < len(data):
        sid = r.byte()
        size = r.uleb()
        s = Reader(data, r.pos, r.pos + size)
        r.pos += size
        if sid == 0:
            if s.name() == "name":
                parse_names(s, m)
        elif sid == 1:
            for _ in range(s.uleb()):
                if s.byte() != 0x60:
                    raise ValueError("type section holds a non-function type")
                params = tuple(s.valtype() for _ in range(s.uleb()))
                results = tuple(s.valtype() for _ in range(s.uleb()))
                m["types"].append((params, results))
        elif sid == 2:
            for _ in range(s.uleb()):
                module, field, kind = s.name(), s.name(), s.byte()
                desc = None
                if kind == 0:
                    desc = s.uleb()
                    m["funcs"].append(desc)
                elif kind == 1:
                    desc = s.valtype()
                    s.limits()
                    m["tables"].append(desc)
                elif kind == 2:
                    s.limits()
                    m["memories"] += 1
                elif kind == 3:
                    desc = (s.valtype(), s.byte())
                    m["globals"].append(desc)
                else:
                    s.uleb()
                    s.uleb()
                m["imports"].append((module, field, kind, desc))
        elif sid == 3:
            m["funcs"] += [s.uleb() for _ in range(s.uleb())]
        elif sid == 4:
            for _ in range(s.uleb()):
                if s.data[s.pos] == 0x40:  # table with an initial value
                    s.byte(); s.byte()
                    t = s.valtype(); s.limits(); s.const_expr()
                else:
                    t = s.valtype(); s.limits()
                m["tables"].append(t)
        elif sid == 5:
            m["memories"] += s.uleb()
        elif sid == 6:
            for _ in range(s.uleb()):
                g = (s.valtype(), s.byte())
                s.const_expr()
                m["globals"].append(g)
        elif sid == 7:
            for _ in range(s.uleb()):
                name, kind, idx = s.name(), s.byte(), s.uleb()
                m["exports"][name] = (kind, idx)
        elif sid == 9:
            parse_elems(s, m)
    return m


def parse_elems(s, m):
    for _ in range(s.uleb()):
        flags = s.uleb()
        table = 0
        active = flags & 1 == 0
        if flags & 2 and active:
            table = s.uleb()
        if active:
            s.const_expr()  # offset
        if flags & 3:
            s.byte()  # elemkind or reftype
        count = s.uleb()
        if flags & 4:
            funcs = [s.const_expr() for _ in range(count)]
        else:
            funcs = [s.uleb() for _ in range(count)]
        if active:
            m["elems"].append((table, [f for f in funcs if f is not None]))


def parse_names(s, m):
    while s.pos < s.end:
        sub, size = s.byte(), s.uleb()
        end = s.pos + size
        if sub in (1, 7):
            target = m["func_names"] if sub == 1 else m["global_names"]
            for _ in range(s.uleb()):
                idx = s.uleb()
                target[idx] = s.name()
        s.pos = end


def check(path, data, demo=None):
    problems = []
    m = parse(data)
    demo = demo or path.stem
    wasnap_imports = set()
    for module, field, kind, desc in m["imports"]:
        if module not in ALLOWED_MODULES:
            problems.append(f"imports {module}.{field}: only wasnap and wasi_snapshot_preview1 are allowed")
            continue
        if module == "wasnap":
            if field not in ABI:
                problems.append(f"imports wasnap.{field}, which is not in the ABI ({', '.join(ABI)})")
            elif kind != 0:
                problems.append(f"imports wasnap.{field} as a non-function")
            elif m["types"][desc] != ABI[field]:
                problems.append(f"wasnap.{field} has type {m['types'][desc]}, the ABI says {ABI[field]}")
            wasnap_imports.add(field)
    if m["memories"] < 1:
        problems.append("has no memory 0")
    entry = [e for e in ("_start", "run") if e in m["exports"]]
    if not entry:
        problems.append("exports neither _start nor run")
    else:
        kind, idx = m["exports"][entry[0]]
        if kind != 0 or m["types"][m["funcs"][idx]] != ((), ()):
            problems.append(f"export {entry[0]} is not a function of type () -> ()")

    handlers = sorted(n for n in m["exports"] if n.startswith(("query_", "update_")))
    for name in handlers:
        kind, idx = m["exports"][name]
        if kind != 0 or m["types"][m["funcs"][idx]] != ((), ()):
            problems.append(f"handler {name} is not a function of type () -> ()")
    if handlers and "respond" not in wasnap_imports:
        problems.append(f"exports handlers ({', '.join(handlers)}) but does not import wasnap.respond")

    if "spawn" in wasnap_imports:
        if not m["tables"] or m["tables"][0] != "funcref":
            problems.append("imports spawn but has no funcref table 0")
        in_table0 = {f for t, fs in m["elems"] if t == 0 for f in fs}
        entries = [f for f in in_table0 if m["types"][m["funcs"][f]] == (("i32",), ())]
        if not entries:
            problems.append("imports spawn but table 0 holds no function of type (i32) -> ()")
        named = [i for i, n in m["global_names"].items() if n == "__stack_pointer"]
        exported = [idx for n, (kind, idx) in m["exports"].items()
                    if n == "__stack_pointer" and kind == 3]
        sp = (named or exported or [None])[0]
        if sp is None:
            problems.append("imports spawn but names no __stack_pointer global")
        elif m["globals"][sp] != ("i32", 1):
            problems.append("__stack_pointer is not a mutable i32")

    needs = {"approval": {"yield", "reply", "respond"},
             "deploy": {"yield", "reply", "respond", "sleep", "yield_timeout"},
             "greenlet": {"yield", "spawn", "switch"}}.get(demo, set())
    for name in sorted(needs - wasnap_imports):
        problems.append(f"the {demo} demo must import wasnap.{name}")
    wanted = {"approval": ["query_status"], "deploy": ["query_status", "update_machines"]}
    for name in wanted.get(demo, []):
        if name not in handlers:
            problems.append(f"the {demo} demo must export the handler {name}")
    if demo == "greenlet" and b"special-g-stack" in data:
        problems.append("contains the bytes special-g-stack: they must be built on g's stack at run time")
    return problems, entry[0] if entry else "-", sorted(wasnap_imports)


def self_test(directory):
    """Each DIR/*.wat names the problem the checker must report (`;; expect:
    TEXT`, or `nothing` for a module it must accept) and, with `;; as: NAME`,
    the demo it poses as."""
    failed = 0
    cases = sorted(Path(directory).glob("*.wat"))
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            header = {}
            for line in case.read_text().splitlines():
                if line.startswith(";; ") and ":" in line:
                    key, _, value = line[3:].partition(":")
                    header.setdefault(key.strip(), value.strip())
            wasm = Path(tmp) / (case.stem + ".wasm")
            subprocess.run(["wat2wasm", "--debug-names", str(case), "-o", str(wasm)], check=True)
            problems, _, _ = check(wasm, wasm.read_bytes(), header.get("as"))
            expect = header.get("expect", "")
            ok = not problems if expect == "nothing" else any(expect in p for p in problems)
            if not ok:
                failed += 1
                print(f"FAIL self-test {case.name}: expected {expect!r}, got {problems}", file=sys.stderr)
    print(f"check-modules self-test: {len(cases) - failed} of {len(cases)} cases as expected")
    return 1 if failed or not cases else 0


def main(args):
    if len(args) == 2 and args[0] == "--self-test":
        return self_test(args[1])
    if len(args) == 1 and Path(args[0]).is_dir():
        files = sorted(Path(args[0]).glob("*/*.wasm"))
    else:
        files = [Path(a) for a in args]
    if not files:
        print("check-modules: no modules to check", file=sys.stderr)
        return 1
    failed = 0
    for f in files:
        try:
            problems, entry, imports = check(f, f.read_bytes())
        except (ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
            problems, entry, imports = [f"cannot be parsed: {e}"], "-", []
        label = f"{f.parent.name}/{f.name}"
        if problems:
            failed += 1
            for p in problems:
                print(f"FAIL {label}: {p}", file=sys.stderr)
        else:
            print(f"ok   {label:28} {f.stat().st_size:8} bytes  entry={entry:7} wasnap: {' '.join(imports)}")
    if failed:
        print(f"check-modules: {failed} of {len(files)} modules break the ABI", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
