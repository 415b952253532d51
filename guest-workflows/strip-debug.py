#!/usr/bin/env python3
"""Drop DWARF (`.debug_*` custom sections) from wasm modules, in place,
keeping everything else, the `name` section above all: the engine finds the
shadow-stack pointer by its name, `__stack_pointer`. Used for toolchains that
can only keep the name section by keeping DWARF too (Zig's -fno-strip).

Usage: strip-debug.py FILE.wasm...
"""
import sys


def uleb(data, pos):
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def strip(data):
    if data[:8] != b"\0asm\1\0\0\0":
        raise ValueError("not a core WebAssembly module")
    out = bytearray(data[:8])
    pos = 8
    while pos < len(data):
        start = pos
        sid = data[pos]
        size, body = uleb(data, pos + 1)
        pos = body + size
        if sid == 0:
            name_len, name_at = uleb(data, body)
            if data[name_at:name_at + name_len].startswith(b".debug"):
                continue
        out += data[start:pos]
    return bytes(out)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(strip(data))
