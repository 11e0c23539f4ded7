#!/usr/bin/env python3
"""Audit at the disk's fsync speed (issue #14): what the audit log costs an audited read,
against what the disk allows, measured in one run.

1. The disk: a loop of pwrite(512 bytes) + fdatasync over a zero-filled file (what the audit
   writer does), the same loop appending to a growing file, and `pg_test_fsync`'s fdatasync
   (one 8 kB write) — in the directory the audit log is written to, in the same run.
2. Audited reads: `pgbench -M prepared` running `SELECT ssn FROM audit_bench WHERE id = :id`
   (one row, `ssn` protected: every statement is audited and its rows wait for their record's
   fdatasync) through pgveil with [audit], interleaved (A B C D A B C D …) with the same
   script through pgveil without [audit], directly against PostgreSQL, and through PgBouncer
   (session mode), at -c 1, 8 and 32; `synchronous_commit = on`.

Printed: TPS per target, audit cost (1 − audited / unaudited pgveil), audited pgveil against
direct and PgBouncer, audit records/s, fdatasyncs/s and records per fdatasync (group commit),
and the latency an audited read adds at one client against the fdatasync latency measured
above (goals, issue #14: ≤ 1.3 × pg_test_fsync's fdatasync; cost < 25 % at -c 8, < 10 % at
-c 32; ≥ 8 records per fdatasync at -c 8). fdatasyncs are counted with `perf stat` on the
syscall tracepoints of the pgveil process; records are the lines added to the segments.
The last line, `RESULT {json}`, is what bench/all.py collects. `pgveil audit verify` checks
the log at the end.

    python3 bench/audit.py [--duration 5] [--rounds 2] [--clients 1,8,32] [--binary B] [--quick]

Needs the PostgreSQL server binaries, pgbench, perf and pgbouncer (installed with apt-get
when missing and run as root); builds pgveil in release mode unless --binary is given.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import (  # noqa: E402
    IS_ROOT, Cluster, SyscallCount, build_pgveil, free_port, load_average, pgveil_keys, protected_config,
    run_pgbench, start_pgbouncer, start_pgveil,
)

TABLE = "audit_bench"
ROWS = 1000
TARGETS = ("audited", "pgveil", "direct", "pgbouncer")


def ensure_pgbouncer():
    if Path("/usr/sbin/pgbouncer").exists() or shutil.which("pgbouncer"):
        return
    if not IS_ROOT:
        sys.exit("pgbouncer is missing: apt-get install pgbouncer")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", *lock, "install", "-y", "-qq", "pgbouncer"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def fsync_loop(path, seconds, prealloc):
    """µs per pwrite(512 B) + fdatasync, consecutive records, for `seconds`."""
    record = b"x" * 511 + b"\n"
    size = 8 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if prealloc:
            zeros = b"\0" * (1 << 20)
            for off in range(0, size, len(zeros)):
                os.pwrite(fd, zeros, off)
            os.fsync(fd)
        n, at = 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and at + len(record) <= size:
            os.pwrite(fd, record, at)
            os.fdatasync(fd)
            at += len(record)
            n += 1
        return (time.perf_counter() - start) / n * 1e6
    finally:
        os.close(fd)
        os.unlink(path)


def pg_test_fsync_us(cluster, directory, seconds):
    """pg_test_fsync's fdatasync (one 8 kB write), µs per operation."""
    out = subprocess.run([cluster.bin("pg_test_fsync"), "-s", str(seconds), "-f", str(directory / "pgtf.out")],
                         capture_output=True, text=True)
    in_section = False
    for line in out.stdout.splitlines():
        if "one 8kB write" in line:
            in_section = True
        elif in_section and line.strip().startswith("fdatasync"):
            parts = line.split()
            try:
                return float(parts[-2])
            except (ValueError, IndexError):
                return None
    return None


def count_records(audit_dir):
    """Record lines (not checkpoints) in the segments' content."""
    n = 0
    for seg in sorted(Path(audit_dir).glob("segment-*.jsonl")):
        content = seg.read_bytes().split(b"\0", 1)[0]
        n += sum(1 for line in content.split(b"\n") if line.startswith(b'{"seq":'))
    return n


def veil_config(keys, audit_dir=None):
    return protected_config(keys, TABLE, (("ssn", "text", "deterministic"),), audit_dir)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--binary", help="pgveil binary (default: cargo build --release)")
    ap.add_argument("--quick", action="store_true", help="one round, 3 s runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3
    clients = [int(c) for c in args.clients.split(",")]
    ensure_pgbouncer()
    binary = build_pgveil(args.binary)
    work = Path(tempfile.mkdtemp(prefix="pgveil-audit-bench-"))
    os.chmod(work, 0o755)
    cluster = Cluster(work / "pg")
    procs = []
    try:
        # 1. The disk, in the directory the log goes to.
        audit_dir = work / "audit"
        audit_dir.mkdir()
        raw_us = fsync_loop(audit_dir / "raw.tmp", 2, prealloc=True)
        append_us = fsync_loop(audit_dir / "raw.tmp", 2, prealloc=False)
        cluster.start()
        pgtf_us = pg_test_fsync_us(cluster, audit_dir, 2)
        print(f"disk: pwrite 512 B + fdatasync over zeros {raw_us:.0f} µs ({1e6 / raw_us:.0f}/s), "
              f"appending {append_us:.0f} µs; pg_test_fsync fdatasync 8 kB: "
              + (f"{pgtf_us:.0f} µs" if pgtf_us else "n/a"), flush=True)

        cluster.psql("ALTER SYSTEM SET synchronous_commit = on")
        cluster.psql("SELECT pg_reload_conf()")
        cluster.psql(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, ssn bytea)")
        keys = pgveil_keys(binary, work / "keys")
        ports = {t: free_port() for t in ("audited", "pgveil", "pgbouncer")}
        ports["direct"] = cluster.port
        audited = start_pgveil(binary, work, ports["audited"], cluster.port, veil_config(keys, audit_dir))
        plain = start_pgveil(binary, work, ports["pgveil"], cluster.port, veil_config(keys))
        (work / "bouncer").mkdir()
        bouncer = start_pgbouncer(work / "bouncer", ports["pgbouncer"], cluster.port)
        procs += [audited, plain, bouncer]
        values = ",".join(f"({i}, '{100000000 + i}')" for i in range(1, ROWS + 1))
        cluster.psql(f"INSERT INTO {TABLE} (id, ssn) VALUES {values}", port=ports["pgveil"])
        script = work / "read.sql"
        script.write_text(f"\\set id random(1, {ROWS})\nSELECT ssn FROM {TABLE} WHERE id = :id;\n")

        res = {(t, c): [] for t in TARGETS for c in clients}
        audit_res = {c: [] for c in clients}
        loads = [load_average()]
        for rnd in range(args.rounds):
            for c in clients:
                for t in TARGETS:
                    counter = None
                    if t == "audited":
                        before = count_records(audit_dir)
                        counter = SyscallCount(audited.pid, work / f"perf-{rnd}-{c}.txt")
                    tps, lat, txs = run_pgbench(cluster, ports[t], ["-f", str(script)], "prepared", c,
                                                args.duration)
                    res[(t, c)].append((tps, lat))
                    line = f"round {rnd + 1} c={c:<3} {t:9} tps={tps:9.0f} lat={lat:7.3f} ms"
                    if counter:
                        counts = counter.stop()
                        fsyncs = counts.get("fdatasync", 0) + counts.get("fsync", 0)
                        records = count_records(audit_dir) - before
                        audit_res[c].append((records / args.duration, fsyncs / args.duration,
                                             records / fsyncs if fsyncs else float("nan")))
                        line += f" records/s={records / args.duration:.0f} fdatasyncs/s={fsyncs / args.duration:.0f}"
                    print(line, flush=True)
            loads.append(load_average())

        verify = subprocess.run([str(binary), "audit", "verify", "--dir", str(audit_dir),
                                 "--public-key", str(keys / "audit.pub")], capture_output=True, text=True)
        print()
        print(f"Audited reads, -M prepared, synchronous_commit = on, {args.rounds} round(s) × {args.duration} s, "
              f"medians; load average at start and after each round: " + "; ".join(loads))
        print(f"Disk (same run, audit directory): 512 B pwrite + fdatasync over zeros {raw_us:.0f} µs "
              f"= {1e6 / raw_us:.0f}/s; appending {append_us:.0f} µs; pg_test_fsync fdatasync "
              + (f"{pgtf_us:.0f} µs" if pgtf_us else "n/a"))
        print(f"audit verify: {(verify.stdout or verify.stderr).strip()}")
        print()
        print("| clients | direct TPS | PgBouncer TPS | pgveil TPS | pgveil + audit TPS | audit cost "
              "| audited / direct | audited / PgBouncer | records/s | fdatasyncs/s | records per fdatasync "
              "| fdatasyncs/s / raw rate | added µs per audited read |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        summary = {"raw_fdatasync_us": raw_us, "append_fdatasync_us": append_us, "pg_test_fsync_us": pgtf_us,
                   "verify_ok": verify.returncode == 0, "clients": {}}
        for c in clients:
            tps = {t: median([x[0] for x in res[(t, c)]]) for t in TARGETS}
            lat = {t: median([x[1] for x in res[(t, c)]]) for t in TARGETS}
            rps = median([x[0] for x in audit_res[c]])
            fps = median([x[1] for x in audit_res[c]])
            rpf = median([x[2] for x in audit_res[c]])
            cost = 1 - tps["audited"] / tps["pgveil"]
            added = (lat["audited"] - lat["pgveil"]) * 1000
            print(f"| {c} | {tps['direct']:.0f} | {tps['pgbouncer']:.0f} | {tps['pgveil']:.0f} | "
                  f"{tps['audited']:.0f} | {cost * 100:.0f}% | {tps['audited'] / tps['direct']:.2f} | "
                  f"{tps['audited'] / tps['pgbouncer']:.2f} | {rps:.0f} | {fps:.0f} | {rpf:.1f} | "
                  f"{fps * raw_us / 1e6:.2f} | {added:.0f} |")
            summary["clients"][c] = {"tps": tps, "audit_cost": cost, "records_per_s": rps, "fdatasyncs_per_s": fps,
                                     "records_per_fdatasync": rpf, "added_us": added}
        goals = []
        fs = pgtf_us or raw_us
        if 1 in summary["clients"]:
            added = summary["clients"][1]["added_us"]
            goals.append(["audit: added latency per audited read at -c 1 / fdatasync latency", "<= 1.3",
                          round(added / fs, 2), added / fs <= 1.3])
        for c, limit in ((8, 0.25), (32, 0.10)):
            if c in summary["clients"]:
                cost = summary["clients"][c]["audit_cost"]
                goals.append([f"audit: cost at -c {c}", f"< {limit:.0%}", f"{cost:.0%}", cost < limit])
        if 8 in summary["clients"]:
            rpf = summary["clients"][8]["records_per_fdatasync"]
            goals.append(["audit: records per fdatasync at -c 8", ">= 8", round(rpf, 1), rpf >= 8])
        goals.append(["audit: log verifies after the run", "intact", "intact" if summary["verify_ok"] else "FAILED",
                      summary["verify_ok"]])
        summary["goals"] = goals
        print()
        print("| goal | target | measured | met |")
        print("|---|---|---|---|")
        for g in goals:
            print(f"| {g[0]} | {g[1]} | {g[2]} | {'yes' if g[3] else 'no'} |")
        print("RESULT " + json.dumps(summary))
        return 0 if summary["verify_ok"] else 1
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
