#!/usr/bin/env python3
"""Runs every benchmark in bench/ once, in short form, and ends with one table of the ratios
they print and one of the goals (issues #10, #11, #14): goal, measured value, met or not. A
script reports its goals on its `RESULT {json}` line (audit.py), or they are read from the
tables and lines it prints (`derived_goals`: phi, relay, idle, copy, scram).

    python3 bench/all.py [--budget 900] [--binary target/release/pgveil] [--only audit,relay]

Builds pgveil in release mode once (unless --binary), then runs each script with its short
options (below; a script not listed runs with `--quick` if it has it), each under a share
of what is left of the budget (default 15 minutes in all), so the whole set ends in time.
profile.py is a profiler (perf record of one run), not a comparison, and is not run.
Each script's full output goes to a log file named in the table; a script that fails or runs
out of time is marked so and the others still run.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import build_pgveil  # noqa: E402

SHORT = {
    "audit.py": ["--quick"],
    "relay.py": ["--quick"],
    "phi.py": ["--quick"],
    "scram.py": ["--duration", "3", "--rounds", "1"],
}
NOT_BENCHMARKS = {"all.py", "common.py", "profile.py"}
# Columns of a printed markdown table that hold a ratio.
RATIO_HEADER = re.compile(r"ratio|/|share|cost|per fdatasync", re.I)
NUMBER = re.compile(r"^-?[\d.]+%?$")


def tables(text):
    """The markdown tables in `text`: lists of rows (lists of cells), header first."""
    out, cur = [], []
    for line in text.splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                continue
            cur.append(cells)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def ratios(text):
    """(row label, column, value) for every ratio cell of every table; the label is the
    leading cells up to the first number."""
    found = []
    for table in tables(text):
        header, rows = table[0], table[1:]
        if "goal" in header[0].lower():
            continue  # goals are reported from RESULT lines
        for row in rows:
            label = []
            for cell in row:
                if NUMBER.match(cell.replace(",", "")):
                    break
                label.append(cell)
            label = " ".join(label) or row[0]
            for name, cell in zip(header, row):
                if RATIO_HEADER.search(name) and NUMBER.match(cell.replace(" ", "")):
                    found.append((label, name, cell))
    return found


def cells(table, row):
    """A table row as {header: cell}."""
    return dict(zip(table[0], row))


def number(cell):
    return float(cell.replace(",", "").rstrip("%x"))


def derived_goals(stem, text):
    """The issue #14 (and #10, #11) goals of a script that prints no RESULT goals, read from
    its printed tables and lines: (goal, target, measured, met)."""
    goals = []
    if stem == "phi":
        for table in tables(text):
            if "(a)/(b)" not in table[0]:
                continue
            for row in table[1:]:
                c = cells(table, row)
                if c.get("clients") == "8":
                    v = number(c["(a)/(b)"])
                    goals.append((f"PHI through pgveil / twin through pgveil, -c 8, {c['mode']}", ">= 0.85", v, v >= 0.85))
    elif stem == "relay":
        for table in tables(text):
            if "proxy CPU µs/tx" not in table[0] or "target" not in table[0]:
                continue
            by = {}
            for row in table[1:]:
                c = cells(table, row)
                if c.get("workload") == "select-only":
                    by[(c["mode"], c["clients"], c["target"])] = c
            for mode in ("simple", "extended", "prepared"):
                veil, bouncer = by.get((mode, "8", "pgveil")), by.get((mode, "8", "pgbouncer"))
                if veil and bouncer and number(bouncer["proxy CPU µs/tx"]) > 0:
                    v = round(number(veil["proxy CPU µs/tx"]) / number(bouncer["proxy CPU µs/tx"]), 2)
                    goals.append((f"relay: proxy CPU per tx / PgBouncer's, -c 8, {mode}", "<= 0.8", v, v <= 0.8))
                veil, bouncer = by.get((mode, "1", "pgveil")), by.get((mode, "1", "pgbouncer"))
                if veil and bouncer:
                    a, b = number(veil["added µs/statement"]), number(bouncer["added µs/statement"])
                    goals.append((f"relay: added µs per statement at -c 1, {mode} (PgBouncer {b:.0f})", "<= PgBouncer", a, a <= b))
    elif stem == "idle":
        m = re.search(r"per connection: ([\d.]+) KiB VmRSS", text)
        if m:
            v = float(m.group(1))
            goals.append(("memory: KiB per idle logged-in connection (1,000)", "<= 16", v, v <= 16))
    elif stem == "copy":
        for direction in ("COPY FROM", "COPY TO"):
            m = re.search(rf"^{direction}\s+[\d,]+\s+[\d,]+\s+([\d.]+)", text, re.M)
            if m:
                v = float(m.group(1))
                goals.append((f"{direction} rows/s through pgveil / direct (#10)", ">= 0.5", v, v >= 0.5))
        m = re.search(r"peak RSS \(VmHWM\): ([\d.]+) MiB", text)
        if m:
            v = float(m.group(1))
            goals.append(("COPY: pgveil peak RSS MiB (#10)", "< 100", v, v < 100))
    elif stem == "scram":
        m = re.search(r"^TLS\s+pgveil auth=scram\s+[\d.]+\s+([\d.]+)x", text, re.M)
        if m:
            v = float(m.group(1))
            goals.append(("connections/s, TLS both legs, auth=scram / PgBouncer auth_query (#11)", ">= 1.0", v, v >= 1.0))
    return goals


def has_option(script, option):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT)
    return option in out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=900, help="seconds for the whole set")
    ap.add_argument("--binary", help="pgveil binary (default: cargo build --release)")
    ap.add_argument("--only", help="comma-separated script names without .py")
    ap.add_argument("--logs", default="/tmp/pgveil-bench-all", help="directory for each script's output")
    args = ap.parse_args()
    start = time.monotonic()
    binary = build_pgveil(args.binary)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    scripts = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name not in NOT_BENCHMARKS)
    if args.only:
        wanted = {f"{n}.py" for n in args.only.split(",")}
        scripts = [s for s in scripts if s.name in wanted]
    rows, goals, status = [], [], []
    for i, script in enumerate(scripts):
        left = args.budget - (time.monotonic() - start)
        timeout = max(30, left / (len(scripts) - i))
        cmd = [sys.executable, str(script), *SHORT.get(script.name, [])]
        if script.name not in SHORT and has_option(script, "--quick"):
            cmd.append("--quick")
        if has_option(script, "--binary"):
            cmd += ["--binary", str(binary)]
        log = logs / f"{script.stem}.log"
        print(f"== {' '.join(cmd[1:])}  (up to {timeout:.0f} s, output in {log})", flush=True)
        t0 = time.monotonic()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
            text, code = out.stdout + out.stderr, out.returncode
        except subprocess.TimeoutExpired as e:
            text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            code = "timeout"
        log.write_text(text)
        status.append((script.stem, code, time.monotonic() - t0))
        for label, column, value in ratios(text):
            rows.append((script.stem, label, column, value))
        goals += [(script.stem, *g) for g in derived_goals(script.stem, text)]
        for line in text.splitlines():
            if line.startswith("RESULT "):
                try:
                    goals += [(script.stem, *g) for g in json.loads(line[7:]).get("goals", [])]
                except json.JSONDecodeError:
                    pass
    total = time.monotonic() - start
    print()
    print(f"All benchmarks in {total:.0f} s (budget {args.budget} s); pgveil {binary}")
    print("| bench | exit | seconds |")
    print("|---|---|---:|")
    for name, code, secs in status:
        print(f"| {name} | {code} | {secs:.0f} |")
    print()
    print("| bench | what | ratio | value |")
    print("|---|---|---|---:|")
    for bench, label, column, value in rows:
        print(f"| {bench} | {label} | {column} | {value} |")
    if goals:
        print()
        print("| bench | goal | target | measured | met |")
        print("|---|---|---|---|---|")
        for bench, name, target, value, met in goals:
            print(f"| {bench} | {name} | {target} | {value} | {'yes' if met else 'NO'} |")
    return 0 if all(code == 0 for _, code, _ in status) else 1


if __name__ == "__main__":
    sys.exit(main())
