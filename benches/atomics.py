#!/usr/bin/env python3
"""Atomic read-modify-write instructions executed per call, from two
callgrind runs made with --dump-instr=yes (see callgrind.sh).

Usage: atomics.py BINARY OUT_FEW OUT_MANY CALLS_BETWEEN [TOP_N]

The `lock`-prefixed instructions, and `xchg` with a memory operand (locked
without the prefix), are found in the binary's disassembly (objdump); their
execution counts are read from each callgrind file; the difference between
the two runs, divided by the calls between them, cancels the start-up.
"""
import collections
import os
import re
import subprocess
import sys


def locked_addrs(binary):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary],
                         capture_output=True, text=True, check=True).stdout
    addrs, func = {}, "?"
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:", line)
        if m:
            func = m.group(2)
            continue
        m = re.match(r"^\s*([0-9a-f]+):\s*(.*)$", line)
        if m:
            ins = m.group(2)
            if ins.startswith("lock") or (ins.startswith("xchg") and "(" in ins):
                addrs[int(m.group(1), 16)] = func
    return addrs


def counts(path, addrs, binary):
    # Only the binary's own instructions: a shared library's addresses can
    # coincide with the binary's, so each cost line is kept only while the
    # current object (`ob=`, compressed to an id after its first mention)
    # is the binary.
    total = collections.Counter()
    cols, cur, skip = 1, 0, False
    names, in_binary = {}, False
    real = os.path.realpath(binary)
    for line in open(path, errors="replace"):
        if line.startswith("positions:"):
            cols = len(line.split()) - 1
            continue
        if line.startswith(("ob=", "cob=")):
            # An object's name comes with its first mention, in either.
            m = re.match(r"c?ob=(\(\d+\))?\s*(.*)$", line.rstrip("\n"))
            oid, name = m.group(1), m.group(2)
            if name and oid:
                names[oid] = name
            if line.startswith("ob="):
                name = name or names.get(oid, "")
                in_binary = bool(name) and os.path.realpath(name) == real
            continue
        if line.startswith("calls="):
            skip = True  # the next line is the call's inclusive cost
            continue
        tok = line.split()
        if not tok or not (tok[0].startswith(("0x", "+", "-")) or tok[0] == "*"):
            skip = False
            continue
        t = tok[0]
        if t.startswith("0x"):
            cur = int(t, 16)
        elif t.startswith("+"):
            cur += int(t[1:])
        elif t.startswith("-"):
            cur -= int(t[1:])
        if skip:
            skip = False
            continue
        if in_binary and len(tok) > cols and cur in addrs:
            total[addrs[cur]] += int(tok[cols])
    return total


binary, few, many, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
top = int(sys.argv[5]) if len(sys.argv) > 5 else 0
addrs = locked_addrs(binary)
a, b = counts(few, addrs, binary), counts(many, addrs, binary)
per = {k: (b[k] - a.get(k, 0)) / calls for k in b}
print(f"{sum(per.values()):.1f}")
for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
    if v >= 0.05:
        print(f"  {v:5.2f}  {k[:150]}")
