#!/usr/bin/env python3
"""COPY benchmark (issue 10): bulk load and bulk export through pgveil vs direct.

A table with two protected columns (`ssn` deterministic text, `birth_date` randomized date)
plus `id` and `name`, and a plaintext twin with the same columns as plain types. psql's
`\\copy` moves N rows (default 1,000,000) in text format; interleaved per round:

  COPY FROM   (a) through pgveil into the protected table   (b) directly into the twin
  COPY TO     (a) through pgveil from the protected table   (b) directly from the twin

Prints rows/s of each, the ratio (a)/(b) (goal >= 0.5) and pgveil's peak RSS (VmHWM, goal
< 100 MiB), sampled VmRSS max while the copies ran, and its CPU seconds. With the audit log
on (default; `--no-audit` turns it off) every COPY TO is one record listing every subject id.

    python3 bench/copy.py [--rows 1000000] [--rounds 1] [--binary target/release/pgveil] [--no-audit]

Needs the PostgreSQL server binaries and psql; builds pgveil in release mode unless --binary
is given.
"""
import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import (  # noqa: E402
    Cluster, build_pgveil, free_port, load_average, pgveil_keys, proc_cpu_seconds, protected_config, start_pgveil,
)

PROTECTED = "copy_patients"
# Must not contain the protected table's name (pgveil's fast path matches table names).
TWIN = "plain_people"
SCHEMA = f"""
DROP TABLE IF EXISTS {PROTECTED}; DROP TABLE IF EXISTS {TWIN};
CREATE TABLE {PROTECTED} (id bigint, name text, ssn bytea, birth_date bytea);
CREATE TABLE {TWIN} (id bigint, name text, ssn text, birth_date date);
"""


def veil_config(keys, audit_dir):
    return protected_config(keys, PROTECTED, (("ssn", "text", "deterministic"), ("birth_date", "date", "randomized")),
                            audit_dir)


def write_data(path, rows):
    with open(path, "w") as f:
        for i in range(1, rows + 1):
            f.write(f"{i}\tPatient number {i}\t{100000000 + i}\t{1930 + i % 80}-{1 + i % 12:02d}-{1 + i % 28:02d}\n")


class RssSampler:
    """The largest VmRSS of a process, sampled every 50 ms while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop_flag = pid, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_flag:
            self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            time.sleep(0.05)

    def stop(self):
        self.stop_flag = True
        self.thread.join()
        return self.peak


def status_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cluster_cpu_seconds(cluster):
    """CPU of the PostgreSQL cluster so far: the postmaster's reaped children (every backend
    that exited, so the copy's backend once its psql is gone) plus the live ones (checkpointer,
    WAL writer, ...)."""
    postmaster = int((cluster.path / "data" / "postmaster.pid").read_text().split()[0])
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    live = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return reaped + sum(proc_cpu_seconds(int(pid)) for pid in live if Path(f"/proc/{pid}").exists())


def psql_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_psql(cluster, port, command, veil_pid):
    """Wall seconds of one psql command, and CPU seconds of psql, the cluster and pgveil."""
    cpu = (psql_cpu_seconds(), cluster_cpu_seconds(cluster), proc_cpu_seconds(veil_pid))
    start = time.monotonic()
    subprocess.run([cluster.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command,
                    *cluster.conn_args(port)], check=True, capture_output=True, env=cluster.env())
    wall = time.monotonic() - start
    time.sleep(0.2)  # the backend exits and is reaped after psql
    after = (psql_cpu_seconds(), cluster_cpu_seconds(cluster), proc_cpu_seconds(veil_pid))
    return wall, tuple(b - a for a, b in zip(cpu, after))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--binary")
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--perf", choices=("in", "out"),
                    help="perf record (cpu-clock, DWARF call graphs) pgveil during this direction's copy")
    ap.add_argument("--perf-out", default="/tmp/pgveil-copy-perf.data")
    args = ap.parse_args()
    binary = build_pgveil(args.binary)
    work = Path(tempfile.mkdtemp(prefix="pgveil-copy-"))
    os.chmod(work, 0o755)
    cluster = Cluster(work / "pg")
    proc = None
    try:
        data = work / "rows.tsv"
        write_data(data, args.rows)
        out_file = "/dev/null"
        cluster.start()
        cluster.psql("ALTER SYSTEM SET synchronous_commit = 'off'")
        cluster.psql("SELECT pg_reload_conf()")
        cluster.psql(SCHEMA)
        keys = pgveil_keys(binary, work / "keys")
        audit_dir = None if args.no_audit else work / "audit"
        port = free_port()
        proc = start_pgveil(binary, work, port, cluster.port, veil_config(keys, audit_dir))
        print(f"COPY of {args.rows:,} rows (text format, psql \\copy), 2 protected columns; "
              f"audit {'off' if args.no_audit else 'on'}; load average {load_average()}")
        sampler = RssSampler(proc.pid)
        cpu_before = proc_cpu_seconds(proc.pid)
        results = {k: [] for k in ("in_veil", "in_direct", "out_veil", "out_direct")}
        cpu_used = {k: [] for k in results}
        for _ in range(args.rounds):
            cluster.psql(f"TRUNCATE {PROTECTED}; TRUNCATE {TWIN}")
            for key, p, command in (("in_veil", port, f"\\copy {PROTECTED} FROM '{data}'"),
                                    ("in_direct", cluster.port, f"\\copy {TWIN} FROM '{data}'"),
                                    ("out_veil", port, f"\\copy {PROTECTED} TO '{out_file}'"),
                                    ("out_direct", cluster.port, f"\\copy {TWIN} TO '{out_file}'")):
                perf = None
                if args.perf and key == f"{args.perf}_veil":
                    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g",
                                             "--call-graph", "dwarf,16384", "-o", args.perf_out,
                                             "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
                    time.sleep(1)
                wall, used = timed_psql(cluster, p, command, proc.pid)
                if perf:
                    perf.send_signal(signal.SIGINT)
                    perf.wait()
                results[key].append(wall)
                cpu_used[key].append(used)
            print(f"  round done, load average {load_average()}")
        cpu = proc_cpu_seconds(proc.pid) - cpu_before
        sampled = sampler.stop()
        hwm = status_kib(proc.pid, "VmHWM")
        # Sanity: the protected table holds ciphertext, and reads back through pgveil.
        check = cluster.psql(f"SELECT count(*) FROM {PROTECTED} WHERE length(ssn) > 20", cluster.port)
        if str(args.rows) not in check:
            raise RuntimeError(f"ciphertext check failed: {check!r}")
        back = cluster.psql(f"SELECT ssn, birth_date FROM {PROTECTED} WHERE id = 7", port)
        if "100000007" not in back:
            raise RuntimeError(f"read back through pgveil failed: {back!r}")
        best = {k: min(v) for k, v in results.items()}
        rate = {k: args.rows / v for k, v in best.items()}
        print(f"\n{'':12}{'pgveil rows/s':>16}{'direct rows/s':>16}{'ratio':>8}  (goal >= 0.5)")
        for what, a, b in (("COPY FROM", "in_veil", "in_direct"), ("COPY TO", "out_veil", "out_direct")):
            print(f"{what:12}{rate[a]:>16,.0f}{rate[b]:>16,.0f}{rate[a] / rate[b]:>8.2f}")
        print(f"\nCPU seconds per copy (best round by wall clock): psql + PostgreSQL + pgveil = total")
        for key in results:
            i = results[key].index(best[key])
            p, b, v = cpu_used[key][i]
            print(f"  {key:11} psql {p:5.2f}  postgres {b:5.2f}  pgveil {v:5.2f}  = {p + b + v:5.2f}"
                  f"  ({v * 1e6 / args.rows:.2f} us/row pgveil)")
        print(f"\npgveil peak RSS (VmHWM): {hwm / 1024:.1f} MiB (goal < 100 MiB); "
              f"largest sampled VmRSS {sampled / 1024:.1f} MiB; pgveil CPU {cpu:.1f} s")
        if audit_dir:
            records = sum(1 for p in Path(audit_dir).glob("*.jsonl")
                          for line in p.read_text().split("\0")[0].splitlines()
                          if '"seq"' in line and '"checkpoint"' not in line)
            print(f"audit records written: {records}")
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
