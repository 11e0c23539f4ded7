#!/usr/bin/env python3
"""PHI workload benchmark (issue #3): what encryption costs through pgveil.

A table with three protected columns (`ssn` deterministic text, `birth_date` randomized
date, `notes` randomized text) plus an id, and a plaintext twin with the same columns as
plain types. One pgbench transaction = INSERT of a new row + SELECT of one preloaded row by
equality on `ssn` (2 statements, autocommit). Interleaved in one run (A B C A B C ...):

  (a) pgveil-phi    the PHI workload through pgveil (values encrypted/decrypted)
  (b) pgveil-twin   the same workload on the plaintext twin through the same pgveil process
                    (its config protects the PHI table, not the twin)
  (c) direct-twin   the twin directly against PostgreSQL

for -M simple/extended/prepared at -c 1 and -c 8 -j 2. Prints TPS, (a)/(b) (goal >= 0.8),
the latency pgveil adds per statement vs (b) and vs (c), and pgveil's CPU time per
transaction.

--audit: the PHI workload through two pgveil processes, one with [audit] (scope =
"protected") and one without, interleaved, at -c 1 and -c 8 (-M prepared unless --modes says
otherwise). Prints the throughput ratio (goal: auditing costs < 10% at 8 clients), audit
records and fsync/fdatasync calls per second and per record. Syscalls are counted with
`perf stat` on the syscall tracepoints (in-kernel counters, no ptrace stops); records are the
non-checkpoint lines added to the segment files. If a run adds no record the script says so
and prints no ratio.

    python3 bench/phi.py [--duration 5] [--rounds 3] [--rows 10000] [--modes simple,extended,prepared]
    python3 bench/phi.py --audit [--duration 5] [--rounds 3]
    python3 bench/phi.py --audit --select-only   # reads only: every record must be durable before its rows
    python3 bench/phi.py --quick            # one round, 3 s runs
    python3 bench/phi.py --plain-literal    # the INSERT also writes a plain column (issue #14)
    python3 bench/phi.py --audit --context  # audit on in both: with vs without a context per transaction

--audit --context: two audited pgveil processes, interleaved; each transaction first runs
`SET pgveil.end_user = 'dr.bench'` (the context, in every audit record) or, in the baseline,
`SET pgveil_bench.end_user = 'dr.bench'` (the same statement for the database, a setting
pgveil does not follow). Prints the throughput ratio (goal: a context costs <= 3%) and checks
that the records of the context run carry the end user.

Needs the PostgreSQL server binaries, pgbench and perf (for --audit); builds pgveil in
release mode unless --binary is given.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import (  # noqa: E402
    Cluster, SyscallCount, build_pgveil, free_port, load_average, pgveil_keys, proc_cpu_seconds, protected_config,
    run_pgbench, start_pgveil,
)

PROTECTED = "phi_patients"
# The twin's name must not contain the protected table's name: pgveil's fast path forwards a
# statement untouched only when no protected table name occurs in its text.
TWIN = "plain_patients"
NOTE = "Follow-up visit: blood pressure 128/82, continue current medication, review in two weeks."
STATEMENTS_PER_TX = 2
MODES = ("simple", "extended", "prepared")


def veil_config(keys, audit_dir=None):
    """The pgveil config beyond [server]/[upstream]: the PHI table protected, the twin not."""
    return protected_config(keys, PROTECTED, (("ssn", "text", "deterministic"), ("birth_date", "date", "randomized"),
                                              ("notes", "text", "randomized")), audit_dir)


SCHEMA = f"""
CREATE TABLE {PROTECTED} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                          ssn bytea, birth_date bytea, notes bytea);
CREATE INDEX {PROTECTED}_ssn ON {PROTECTED} (ssn);
CREATE TABLE {TWIN} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     ssn text, birth_date date, notes text);
CREATE INDEX {TWIN}_ssn ON {TWIN} (ssn);
"""


def preload_sql(table, rows):
    """Rows 1..N with ssn = 100000000 + i (9 digits), loaded through pgveil so the protected
    table holds real ciphertexts."""
    out = []
    for start in range(1, rows + 1, 500):
        values = ",".join(
            f"('{100000000 + i}', '{1930 + i % 80}-{1 + i % 12:02d}-{1 + i % 28:02d}', 'Preloaded note {i}')"
            for i in range(start, min(rows, start + 499) + 1))
        out.append(f"INSERT INTO {table} (ssn, birth_date, notes) VALUES {values};")
    return "\n".join(out) + "\n"


def script(table, mode, rows, select_only=False, context=None, plain=False):
    """pgbench script. Inserted ssns (200000000..) never collide with the preloaded ones the
    SELECT looks up (100000001..100000000+rows), so every SELECT returns exactly one row.
    Simple protocol: quoted literals (pgbench substitutes variables as raw text). Extended and
    prepared: bare variables, which pgbench sends as untyped text parameters, so PostgreSQL
    infers the column types and pgveil encrypts the parameters (every execution: also the
    constant note, so each transaction does the same crypto work in every mode)."""
    head = (f"\\set id random(1, {rows})\n"
            "\\set nssn random(200000000, 899999999)\n"
            "\\set bd random(1930, 2015) * 10000 + random(1, 12) * 100 + random(1, 28)\n"
            "\\set lssn 100000000 + :id\n")
    if plain and mode == "simple":
        # A plain column whose literal differs on every statement (issue #14).
        insert = f"INSERT INTO {table} (ssn, birth_date, notes, name) VALUES (':nssn', ':bd', '{NOTE}', 'n:nssn');\n"
        select = f"SELECT id, ssn, birth_date, notes FROM {table} WHERE ssn = ':lssn';\n"
    elif plain:
        insert = f"INSERT INTO {table} (ssn, birth_date, notes, name) VALUES (:nssn, :bd, :note, :nssn);\n"
        select = f"SELECT id, ssn, birth_date, notes FROM {table} WHERE ssn = :lssn;\n"
    elif mode == "simple":
        insert = f"INSERT INTO {table} (ssn, birth_date, notes) VALUES (':nssn', ':bd', '{NOTE}');\n"
        select = f"SELECT id, ssn, birth_date, notes FROM {table} WHERE ssn = ':lssn';\n"
    else:
        insert = f"INSERT INTO {table} (ssn, birth_date, notes) VALUES (:nssn, :bd, :note);\n"
        select = f"SELECT id, ssn, birth_date, notes FROM {table} WHERE ssn = :lssn;\n"
    # The context statement is a literal in every mode: SET takes no parameters.
    first = f"SET {context}.end_user = 'dr.bench';\n" if context else ""
    return head + first + ("" if select_only else insert) + select


class Env:
    """Throwaway cluster with both tables preloaded, keys, and pgveil processes."""

    def __init__(self, binary, rows, keep=False, synchronous_commit="off", select_only=False, plain=False):
        self.binary = binary
        self.plain = plain
        self.statements = 1 if select_only else STATEMENTS_PER_TX
        self.rows = rows
        self.synchronous_commit = synchronous_commit
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix="pgveil-phi-"))
        os.chmod(self.work, 0o755)
        self.cluster = Cluster(self.work / "pg")
        self.keys = pgveil_keys(binary, self.work / "keys")
        self.procs = []
        self.scripts = {}
        for table in (PROTECTED, TWIN):
            for mode in MODES:
                path = self.work / f"{table}-{mode}.pgbench"
                path.write_text(script(table, mode, rows, select_only, plain=plain))
                self.scripts[(table, mode)] = path
                for context in ("pgveil", "pgveil_bench"):
                    path = self.work / f"{table}-{mode}-{context}.pgbench"
                    path.write_text(script(table, mode, rows, select_only, context))
                    self.scripts[(table, mode, context)] = path

    def start(self):
        self.cluster.start()
        self.cluster.psql(f"ALTER SYSTEM SET synchronous_commit = '{self.synchronous_commit}'")
        self.cluster.psql("SELECT pg_reload_conf()")
        self.cluster.psql(SCHEMA)
        if self.plain:
            self.cluster.psql(f"ALTER TABLE {PROTECTED} ADD COLUMN name text; ALTER TABLE {TWIN} ADD COLUMN name text")
        return self

    def pgveil(self, audit_dir=None):
        port = free_port()
        proc = start_pgveil(self.binary, self.work, port, self.cluster.port, veil_config(self.keys, audit_dir))
        self.procs.append(proc)
        return port, proc

    def preload(self, port):
        for table in (PROTECTED, TWIN):
            sql = self.work / f"preload-{table}.sql"
            sql.write_text(preload_sql(table, self.rows))
            subprocess.run([self.cluster.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sql),
                            *self.cluster.conn_args(port)], check=True, capture_output=True, env=self.cluster.env())
        self.cluster.psql("VACUUM ANALYZE")
        # Sanity: the encrypted table answers an equality lookup through pgveil.
        out = self.cluster.psql(f"SELECT birth_date FROM {PROTECTED} WHERE ssn = '{100000000 + self.rows}'", port)
        if str(1930 + self.rows % 80) not in out:
            raise RuntimeError(f"lookup through pgveil did not return the preloaded row: {out!r}")

    def pgbench(self, port, table, mode, clients, duration, context=None):
        key = (table, mode, context) if context else (table, mode)
        args = ["-f", str(self.scripts[key]), "-D", f"note={NOTE}"]
        return run_pgbench(self.cluster, port, args, mode, clients, duration)

    def close(self):
        for p in self.procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.cluster.stop()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def db_cpu_seconds(cluster):
    """CPU time of the whole cluster: the postmaster's own plus that of its exited children
    (`cutime`/`cstime`: a pgbench run's backends exit when it disconnects and are counted once
    the postmaster has reaped them). Long-lived helpers (walwriter, checkpointer) count only when
    they exit, which they do not during a run; their work is small next to the backends'."""
    pid = int((cluster.path / "data" / "postmaster.pid").read_text().split()[0])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    """CPU time of this script's exited children (pgbench, psql and the `runuser` around them)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def med(rows, i):
    return statistics.median(r[i] for r in rows)


def main():
    # Stop cleanly (cluster, pgveil, temp dir) on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=10000, help="preloaded rows per table")
    ap.add_argument("--modes", default=None, help="comma-separated pgbench -M modes")
    ap.add_argument("--clients", default="1,8", help="comma-separated client counts")
    ap.add_argument("--audit", action="store_true", help="audit on vs off instead of (a)/(b)/(c)")
    ap.add_argument("--context", action="store_true",
                    help="with --audit: a context set per transaction vs none, both audited")
    ap.add_argument("--select-only", action="store_true",
                    help="transactions of the SELECT alone (no INSERT): a pure read workload")
    ap.add_argument("--plain-literal", action="store_true",
                    help="the INSERT also writes a plain column `name` whose simple-protocol literal differs "
                         "on every statement (a shared plan must generalize it)")
    ap.add_argument("--binary", help="pgveil binary to use (default: cargo build --release)")
    ap.add_argument("--synchronous-commit", default="off", choices=("on", "off"),
                    help="the cluster's synchronous_commit (default off: the disk is shared with concurrent "
                         "builds and its fsync latency, 0.2-4 ms, would drown the proxy's cost)")
    ap.add_argument("--quick", action="store_true", help="one round, 3 s runs")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 3, 1
    modes = args.modes.split(",") if args.modes else (["prepared"] if args.audit else list(MODES))
    clients = [int(c) for c in args.clients.split(",")]

    binary = build_pgveil(args.binary)
    env = Env(binary, args.rows, synchronous_commit=args.synchronous_commit, select_only=args.select_only,
              plain=args.plain_literal)
    try:
        env.start()
        if args.audit and args.context:
            context_cost(env, args, modes, clients)
        elif args.audit:
            audit(env, args, modes, clients)
        else:
            compare(env, args, modes, clients)
    finally:
        env.close()


def compare(env, args, modes, clients):
    veil_port, veil = env.pgveil()
    env.preload(veil_port)
    targets = {
        "pgveil-phi": (veil_port, PROTECTED, veil.pid),
        "pgveil-twin": (veil_port, TWIN, veil.pid),
        "direct-twin": (env.cluster.port, TWIN, None),
    }
    loads = [load_average()]
    results = {}  # (mode, clients, target) -> [(tps, latency ms, cpu µs/tx)]
    configs = [(m, c) for m in modes for c in clients]
    for rnd in range(args.rounds):
        for mode, c in configs:
            for target, (port, table, pid) in targets.items():
                cpu0 = proc_cpu_seconds(pid) if pid else 0.0
                db0, bench0 = db_cpu_seconds(env.cluster), children_cpu_seconds()
                tps, lat, txs = env.pgbench(port, table, mode, c, args.duration)
                cpu_us = (proc_cpu_seconds(pid) - cpu0) * 1e6 / txs if pid and txs else 0.0
                time.sleep(0.3)  # let the postmaster reap the run's backends
                db_us = (db_cpu_seconds(env.cluster) - db0) * 1e6 / txs if txs else 0.0
                bench_us = (children_cpu_seconds() - bench0) * 1e6 / txs if txs else 0.0
                results.setdefault((mode, c, target), []).append((tps, lat, cpu_us, db_us, bench_us))
                print(f"round {rnd + 1} {mode:8} c={c} {target:11} tps={tps:8.0f} lat={lat:7.3f} ms "
                      f"cpu={cpu_us:6.1f} µs/tx db={db_us:6.1f} µs/tx pgbench={bench_us:6.1f} µs/tx",
                      file=sys.stderr, flush=True)
        loads.append(load_average())

    what = "SELECT by ssn" if args.select_only else "INSERT + SELECT by ssn"
    if args.plain_literal and not args.select_only:
        what = "INSERT with a plain name + SELECT by ssn"
    print(f"\nPHI workload ({what}, {env.statements} statements/tx), {args.rounds} rounds x "
          f"{args.duration} s, synchronous_commit={args.synchronous_commit}, medians; load average (1/5/15 min) at start and after each round: "
          + "; ".join(loads))
    print()
    print("| mode | clients | (a) pgveil PHI TPS | (b) pgveil twin TPS | (c) direct twin TPS | (a)/(b) | (a)/(c) "
          "| added µs/stmt vs (b) | added µs/stmt vs (c) | pgveil CPU µs/tx (a) | pgveil CPU µs/tx (b) "
          "| database CPU µs/tx (a) / (b) / (c) | pgbench CPU µs/tx (a) / (b) / (c) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, c in configs:
        a, b, d = (results[(mode, c, t)] for t in targets)
        ta, tb, tc = med(a, 0), med(b, 0), med(d, 0)
        la, lb, lc = med(a, 1), med(b, 1), med(d, 1)
        print(f"| {mode} | {c} | {ta:.0f} | {tb:.0f} | {tc:.0f} | {ta / tb:.2f} | {ta / tc:.2f} "
              f"| {(la - lb) * 1000 / env.statements:.0f} | {(la - lc) * 1000 / env.statements:.0f} "
              f"| {med(a, 2):.0f} | {med(b, 2):.0f} "
              f"| {med(a, 3):.0f} / {med(b, 3):.0f} / {med(d, 3):.0f} | {med(a, 4):.0f} / {med(b, 4):.0f} / {med(d, 4):.0f} |")


def count_records(audit_dir):
    """Audit records (not checkpoints) in the segment files."""
    n = 0
    for seg in sorted(Path(audit_dir).glob("segment-*.jsonl")):
        with open(seg, "rb") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and "checkpoint" not in obj:
                    n += 1
    return n


def audit(env, args, modes, clients):
    audit_dir = env.work / "audit"
    audit_dir.mkdir()
    on_port, on = env.pgveil(audit_dir=audit_dir)
    off_port, off = env.pgveil()
    env.preload(off_port)
    targets = {"audit-on": (on_port, on.pid), "audit-off": (off_port, off.pid)}
    loads = [load_average()]
    results = {}  # (mode, clients, target) -> [(tps, lat, cpu µs/tx, records/s, fsyncs/s, records, fsyncs, txs)]
    configs = [(m, c) for m in modes for c in clients]
    for rnd in range(args.rounds):
        for mode, c in configs:
            for target, (port, pid) in targets.items():
                rec0 = count_records(audit_dir)
                counter = SyscallCount(pid, env.work / f"perf-stat-{target}.txt")
                cpu0 = proc_cpu_seconds(pid)
                tps, lat, txs = env.pgbench(port, PROTECTED, mode, c, args.duration)
                cpu_us = (proc_cpu_seconds(pid) - cpu0) * 1e6 / txs if txs else 0.0
                syncs = sum(counter.stop().values())
                records = count_records(audit_dir) - rec0
                elapsed = txs / tps if tps else args.duration
                results.setdefault((mode, c, target), []).append(
                    (tps, lat, cpu_us, records / elapsed, syncs / elapsed, records, syncs, txs))
                print(f"round {rnd + 1} {mode:8} c={c} {target:9} tps={tps:8.0f} lat={lat:7.3f} ms "
                      f"cpu={cpu_us:6.1f} µs/tx records={records} fsyncs={syncs}", file=sys.stderr, flush=True)
                if target == "audit-on" and records == 0:
                    files = sorted(p.name for p in audit_dir.iterdir())
                    print(f"\nNO AUDIT RECORDS: pgveil with [audit] configured ran {txs} PHI transactions "
                          f"({env.statements} statements in scope each) and wrote no audit record "
                          f"(audit dir {audit_dir}: {files or 'empty'}). This build does not audit "
                          "statements yet, so there is no audit cost to measure: no ratio printed.")
                    sys.exit(3)
        loads.append(load_average())

    print(f"\nAudit cost, PHI workload{' (SELECT only)' if args.select_only else ''}, {args.rounds} rounds x {args.duration} s, "
          f"synchronous_commit={args.synchronous_commit}, medians; load average at start "
          "and after each round: " + "; ".join(loads))
    print("fsyncs = fsync + fdatasync calls by the pgveil process (perf stat, syscall tracepoints); "
          "records = audit records added to the segment files during the run.")
    print()
    print("| mode | clients | audit off TPS | audit on TPS | on/off | cost | records/s | fsyncs/s | records per fsync "
          "| records/tx | CPU µs/tx off | CPU µs/tx on |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, c in configs:
        on_r, off_r = results[(mode, c, "audit-on")], results[(mode, c, "audit-off")]
        t_on, t_off = med(on_r, 0), med(off_r, 0)
        recs, syncs, txs = sum(r[5] for r in on_r), sum(r[6] for r in on_r), sum(r[7] for r in on_r)
        per_sync = f"{recs / syncs:.1f}" if syncs else "no fsync"
        print(f"| {mode} | {c} | {t_off:.0f} | {t_on:.0f} | {t_on / t_off:.2f} | {(1 - t_on / t_off) * 100:.0f}% "
              f"| {med(on_r, 3):.0f} | {med(on_r, 4):.0f} | {per_sync} | {recs / txs:.2f} "
              f"| {med(off_r, 2):.0f} | {med(on_r, 2):.0f} |")
        off_syncs = sum(r[6] for r in off_r)
        if off_syncs:
            print(f"  (the pgveil without [audit] made {off_syncs} fsync calls in these runs)")
    verify = subprocess.run([str(env.binary), "audit", "verify", "--dir", str(audit_dir), "--public-key",
                             str(env.keys / "audit.pub")], capture_output=True, text=True)
    print(f"\naudit verify: exit {verify.returncode}: {(verify.stdout + verify.stderr).strip()}")


def context_cost(env, args, modes, clients):
    """Both pgveil processes audited (each its own log): a context per transaction or not."""
    dirs = {"context-off": env.work / "audit-off", "context-on": env.work / "audit-on"}
    targets = {}
    for target, audit_dir in dirs.items():
        audit_dir.mkdir()
        port, proc = env.pgveil(audit_dir=audit_dir)
        targets[target] = (port, proc.pid, "pgveil" if target == "context-on" else "pgveil_bench")
    env.preload(targets["context-off"][0])
    loads = [load_average()]
    results = {}
    configs = [(m, c) for m in modes for c in clients]
    for rnd in range(args.rounds):
        for mode, c in configs:
            for target, (port, pid, context) in targets.items():
                rec0 = count_records(dirs[target])
                tps, lat, txs = env.pgbench(port, PROTECTED, mode, c, args.duration, context)
                records = count_records(dirs[target]) - rec0
                results.setdefault((mode, c, target), []).append((tps, lat, records, txs))
                print(f"round {rnd + 1} {mode:8} c={c} {target:11} tps={tps:8.0f} lat={lat:7.3f} ms "
                      f"records={records}", file=sys.stderr, flush=True)
        loads.append(load_average())
    print(f"\nContext cost, PHI workload with audit on{' (SELECT only)' if args.select_only else ''}, "
          f"{args.rounds} rounds x {args.duration} s, synchronous_commit={args.synchronous_commit}, medians; "
          "load average at start and after each round: " + "; ".join(loads))
    print()
    print("| mode | clients | no context TPS | context TPS | context/none | cost | records/tx none | records/tx context |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, c in configs:
        on_r, off_r = results[(mode, c, "context-on")], results[(mode, c, "context-off")]
        t_on, t_off = med(on_r, 0), med(off_r, 0)
        per_tx = lambda rows: sum(r[2] for r in rows) / max(1, sum(r[3] for r in rows))  # noqa: E731
        print(f"| {mode} | {c} | {t_off:.0f} | {t_on:.0f} | {t_on / t_off:.3f} | {(1 - t_on / t_off) * 100:.1f}% "
              f"| {per_tx(off_r):.2f} | {per_tx(on_r):.2f} |")
    # The context run's records carry the end user; the baseline's carry none.
    for target, want in (("context-on", "dr.bench"), ("context-off", None)):
        users = set()
        for seg in sorted(dirs[target].glob("segment-*.jsonl")):
            for line in seg.read_bytes().split(b"\n"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and "checkpoint" not in obj and obj.get("kind") == "select":
                    users.add(obj.get("end_user"))
        print(f"{target}: end_user in its SELECT records: {sorted(map(str, users))} (expected {want})")


if __name__ == "__main__":
    main()
