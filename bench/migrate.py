#!/usr/bin/env python3
"""`pgveil migrate` of two plaintext columns (issue #12): how fast it encrypts, and what it
does to a concurrent reader through pgveil, measured in one run.

1. A throwaway cluster and `patients (id bigint primary key, ssn text, birth_date date,
   note text)` with --rows rows (default 1,000,000), loaded directly (the table a DBA has
   before adopting pgveil), then VACUUM ANALYZE. pgveil's configuration protects `ssn` (text,
   deterministic) and `birth_date` (date, randomized); `note` is not protected.
2. `pgveil migrate --config FILE` over both columns (login from PGUSER/PGDATABASE), with
   PostgreSQL's defaults (synchronous_commit = on). Its progress lines on stderr and summary
   lines on stdout are time-stamped as they arrive, which splits each column's time into
   prepare, copy, verify and swap + validate + drop. Printed: rows/s per column and in total,
   and the CPU time of the migrate process.
3. One reader through `pgveil serve` (same configuration) all along: pgbench, 1 client,
   `-M prepared`, `SELECT id, note FROM patients WHERE id = :id` (random id) at --reader-rate
   statements/s (Poisson schedule, `-R`), run in chunks of a few seconds with a per-statement
   log (`-l`). A statement's latency is pgbench's logged time minus its schedule lag, i.e.
   from sending it to its result. Statements are split by when they completed: --baseline
   seconds before the migration (no migration running), during it (and per phase), and
   --baseline seconds after it. Printed: median, p99 and max per window and the ratios
   during / before and during / after.

   The reader reads `note`, not the protected columns: with this pgveil a protected column
   cannot be read through pgveil before its swap (its stored values are still plaintext and
   pgveil refuses them as undecryptable, XX001). The script probes that once before the
   migration and after it and prints what it got. The statement still names the protected
   table, so it takes pgveil's full path (analysis, row plan), not the fast path.

    python3 bench/migrate.py [--rows 1000000] [--batch-size N] [--reader-rate 100]
                             [--baseline 20] [--binary target/release/pgveil] [--quick]

`--quick`: 50,000 rows, 5 s baselines. The last line, `RESULT {json}`, is for bench/all.py.
Needs the PostgreSQL server binaries and pgbench; builds pgveil in release mode unless
--binary is given.
"""
import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import Cluster, build_pgveil, free_port, load_average, pgveil_keys, start_pgveil  # noqa: E402

TABLE = "patients"
COLUMNS = (("ssn", "text", "deterministic"), ("birth_date", "date", "randomized"))
CHUNK_SECONDS = 5


def veil_config(keys):
    columns = "".join(
        f'\n[[column]]\ntable = "public.{TABLE}"\ncolumn = "{name}"\ntype = "{ty}"\nencryption = "{mode}"\n'
        for name, ty, mode in COLUMNS)
    return (f'\n[keys]\nmaster_key_file = "{keys / "master.key"}"\n\n'
            f'[policy]\ndefault_access = "plaintext"\n{columns}')


def load_table(cluster, rows):
    """The plaintext table, loaded directly; ssn 9 digits, birth dates over 60 years."""
    cluster.psql(f"""
        CREATE TABLE {TABLE} (id bigint PRIMARY KEY, ssn text, birth_date date, note text);
        INSERT INTO {TABLE} SELECT g, lpad((100000000 + g)::text, 9, '0'),
               date '1940-01-01' + ((g::bigint * 7919) % 21915)::int, 'note ' || g
          FROM generate_series(1, {rows}) g""")
    cluster.psql(f"VACUUM ANALYZE {TABLE}")


class Reader(threading.Thread):
    """pgbench, 1 client, in chunks of CHUNK_SECONDS until stopped; every statement as
    (completion time, latency ms), and the errors of chunks that failed."""

    def __init__(self, cluster, port, work, rows, rate):
        super().__init__(daemon=True)
        self.cluster, self.port, self.work, self.rate = cluster, port, Path(work), rate
        self.script = self.work / "reader.sql"
        self.script.write_text(f"\\set id random(1, {rows})\nSELECT id, note FROM {TABLE} WHERE id = :id;\n")
        self.stop_event = threading.Event()
        self.samples = []
        self.errors = []

    def run(self):
        chunk = 0
        while not self.stop_event.is_set():
            chunk += 1
            logs = self.work / f"reader-{chunk}"
            logs.mkdir()
            cmd = [self.cluster.bin("pgbench"), "-n", "-c", "1", "-j", "1", "-M", "prepared", "-R", str(self.rate),
                   "-T", str(CHUNK_SECONDS), "-f", str(self.script), "-l", "--log-prefix", str(logs / "tx"),
                   *self.cluster.conn_args(self.port)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=self.cluster.env(), cwd=logs)
            if out.returncode != 0:
                self.errors.append((time.time(), out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]))
                time.sleep(1)  # not a busy loop if pgveil is gone
            for log in logs.glob("tx*"):
                for line in log.read_text().splitlines():
                    f = line.split()
                    # client, tx no, latency µs (from its scheduled start), script, epoch s, µs, schedule lag µs
                    if len(f) >= 7 and f[2].isdigit():
                        done = int(f[4]) + int(f[5]) / 1e6
                        self.samples.append((done, (int(f[2]) - int(float(f[6]))) / 1000))
            shutil.rmtree(logs, ignore_errors=True)

    def stop(self):
        self.stop_event.set()
        self.join(timeout=CHUNK_SECONDS + 30)

    def window(self, start, end):
        return [lat for t, lat in self.samples if start <= t < end]


def stats(latencies):
    if not latencies:
        return {"n": 0, "median": float("nan"), "p99": float("nan"), "max": float("nan")}
    xs = sorted(latencies)
    p99 = xs[math.ceil(0.99 * len(xs)) - 1]  # nearest rank
    return {"n": len(xs), "median": statistics.median(xs), "p99": p99, "max": xs[-1]}


def run_migrate(binary, config, cluster, batch_size, procs):
    """Runs `pgveil migrate`, time-stamping its output lines. Returns (exit code, events
    [(time, stream, line)], start, end, CPU seconds of the process, from wait4)."""
    cmd = [str(binary), "migrate", "--config", str(config)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    events = []
    lock = threading.Lock()

    def pump(stream, name):
        for line in stream:
            with lock:
                events.append((time.time(), name, line.rstrip("\n")))

    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env())
    procs.append(proc)
    pumps = [threading.Thread(target=pump, args=(proc.stdout, "out")),
             threading.Thread(target=pump, args=(proc.stderr, "err"))]
    for p in pumps:
        p.start()
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for p in pumps:
        p.join()
    return proc.returncode, events, start, end, usage.ru_utime + usage.ru_stime


def column_phases(events, start, end):
    """Per column: its window and its phases [(phase, from, to)], from the progress lines
    (`<table.column> (encrypt|verify): … to go through` / `: done, …`) and the summary line
    on stdout that ends the column."""
    cols = {}
    order = []
    for t, stream, line in events:
        for name, _, _ in COLUMNS:
            q = f"public.{TABLE}.{name}"
            if q not in line:
                continue
            if q not in cols:
                cols[q] = {}
                order.append(q)
            marks = cols[q]
            if stream == "err" and "(encrypt)" in line and "to go through" in line:
                marks.setdefault("copy", t)
            elif stream == "err" and "(encrypt): done" in line:
                marks["verify"] = t
            elif stream == "err" and "(verify): done" in line:
                marks["swap"] = t
            elif stream == "out":
                marks["end"] = t
    result = []
    prev = start
    for q in order:
        m = cols[q]
        col_end = m.get("end", end)
        points = [("prepare", prev), ("copy", m.get("copy")), ("verify", m.get("verify")),
                  ("swap + validate + drop", m.get("swap")), (None, col_end)]
        points = [(p, t) for p, t in points if t is not None]
        phases = [(p, t, points[i + 1][1]) for i, (p, t) in enumerate(points[:-1])]
        result.append((q, prev, col_end, phases))
        prev = col_end
    return result


def query(cluster, port, sql):
    """psql -At: (exit code, stdout, stderr)."""
    out = subprocess.run([cluster.bin("psql"), "-X", "-A", "-t", "-c", sql, *cluster.conn_args(port)],
                         capture_output=True, text=True, env=cluster.env())
    return out.returncode, out.stdout.strip(), out.stderr.strip()


def probe(cluster, port, what):
    """One read of the protected columns themselves through pgveil: whether it returned
    their values (not printed) or its error, one line."""
    code, _, err = query(cluster, port, f"SELECT ssn, birth_date FROM {TABLE} WHERE id = 1")
    return f"{what}: " + ("ok, values returned" if code == 0 else (err.splitlines() or ["failed"])[0])


def fmt(x):
    return f"{x:.2f}" if x == x else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, help="pgveil migrate --batch-size (default: pgveil's)")
    ap.add_argument("--reader-rate", type=int, default=100, help="reader statements per second")
    ap.add_argument("--baseline", type=int, default=20, help="seconds of reading before and after the migration")
    ap.add_argument("--binary", help="pgveil binary (default: cargo build --release)")
    ap.add_argument("--quick", action="store_true", help="50,000 rows, 5 s baselines")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.baseline = 50_000, 5
    # Stop cleanly (cluster, pgveil, temp dir) on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = build_pgveil(args.binary)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="pgveil-migrate-bench-"))
    os.chmod(work, 0o755)
    cluster = Cluster(work / "pg")
    procs = []
    reader = None
    loads = {"start": load_average()}
    try:
        cluster.start()
        t = time.time()
        load_table(cluster, args.rows)
        print(f"loaded {args.rows:,} rows in {time.time() - t:.1f} s; load average {load_average()}", flush=True)
        keys = pgveil_keys(binary, work / "keys")
        port = free_port()
        veil = start_pgveil(binary, work, port, cluster.port, veil_config(keys))
        procs.append(veil)
        config = work / f"pgveil-{port}.toml"
        probe_before = probe(cluster, port, "protected columns through pgveil before the migration")
        print(probe_before, flush=True)

        reader = Reader(cluster, port, work, args.rows, args.reader_rate)
        reader.start()
        time.sleep(2)  # warm-up: connection, prepared statement, caches
        before = (time.time(), time.time() + args.baseline)
        time.sleep(args.baseline)
        loads["before migrate"] = load_average()
        print(f"reader baseline done; migrating (load average {loads['before migrate']})", flush=True)
        code, events, m_start, m_end, cpu = run_migrate(binary, config, cluster, args.batch_size, procs)
        loads["after migrate"] = load_average()
        for t, stream, line in events:
            if not line.endswith(" rows"):  # the periodic `done/total rows` lines
                print(f"  {t - m_start:7.1f} s migrate {'stdout' if stream == 'out' else 'stderr'}: {line}")
        print(f"migrate exit {code} after {m_end - m_start:.1f} s (load average {loads['after migrate']})", flush=True)
        after = (time.time(), time.time() + args.baseline)
        time.sleep(args.baseline)
        loads["end"] = load_average()
        reader.stop()
        probe_after = probe(cluster, port, "protected columns through pgveil after the migration")
        print(probe_after)
        _, types, _ = query(cluster, cluster.port, f"SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' "
                             f"ORDER BY attnum) FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass "
                             "AND attnum > 0 AND NOT attisdropped")
        print(f"columns after the migration: {types}")
        if code != 0:
            print("pgveil migrate failed: no table", file=sys.stderr)
            return 1

        # Migration speed.
        cols = column_phases(events, m_start, m_end)
        total = m_end - m_start
        print()
        print(f"pgveil migrate, {args.rows:,} rows, 2 columns, batch size {args.batch_size or 'default'}, "
              f"synchronous_commit = on; {version}; load average (1/5/15 min): start {loads['start']}, "
              f"before migrate {loads['before migrate']}, after migrate {loads['after migrate']}, end {loads['end']}")
        print()
        print("| column | seconds | rows/s | prepare s | copy s | verify s | swap + validate + drop s | copy rows/s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        summary = {"rows": args.rows, "seconds": total, "rows_per_s": args.rows / total,
                   "migrate_cpu_s": cpu, "columns": {}, "loads": loads}
        for q, c_start, c_end, phases in cols:
            secs = {p: b - a for p, a, b in phases}
            copy_rate = f"{args.rows / secs['copy']:.0f}" if secs.get("copy") else "-"
            print(f"| {q} | {c_end - c_start:.1f} | {args.rows / (c_end - c_start):.0f} | "
                  + " | ".join(f"{secs[p]:.1f}" if p in secs else "-"
                               for p in ("prepare", "copy", "verify", "swap + validate + drop"))
                  + f" | {copy_rate} |")
            summary["columns"][q] = {"seconds": c_end - c_start, "rows_per_s": args.rows / (c_end - c_start),
                                     "phases": secs}
        print(f"| total (both columns) | {total:.1f} | {args.rows / total:.0f} | | | | | |")
        print()
        print(f"column values encrypted per second: {2 * args.rows / total:.0f}; CPU of the migrate process "
              f"{cpu:.1f} s = {cpu / (2 * args.rows) * 1e6:.1f} µs per value")

        # The reader.
        windows = [("no migration (before)", *before), ("during the migration", m_start, m_end),
                   ("no migration (after)", *after)]
        res = {name: stats(reader.window(a, b)) for name, a, b in windows}
        print()
        print(f"Reader through pgveil: 1 client, -M prepared, {args.reader_rate}/s, "
              f"SELECT id, note FROM {TABLE} WHERE id = :id; latency in ms (send to result)")
        print()
        print("| window | seconds | statements | median ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, a, b in windows:
            r = res[name]
            print(f"| {name} | {b - a:.0f} | {r['n']} | {fmt(r['median'])} | {fmt(r['p99'])} | {fmt(r['max'])} |")
        for q, _, _, phases in cols:
            for p, a, b in phases:
                r = stats(reader.window(a, b))
                print(f"| during: {q.rsplit('.', 1)[1]} {p} | {b - a:.1f} | {r['n']} | {fmt(r['median'])} | "
                      f"{fmt(r['p99'])} | {fmt(r['max'])} |")
        during = res["during the migration"]
        print()
        print("| reader latency | during / before | during / after |")
        print("|---|---:|---:|")
        ratios = {}
        for key in ("median", "p99"):
            b = during[key] / res["no migration (before)"][key]
            a = during[key] / res["no migration (after)"][key]
            ratios[key] = {"during_before": b, "during_after": a}
            print(f"| {key} | {fmt(b)} | {fmt(a)} |")
        if reader.errors:
            print(f"reader errors: {len(reader.errors)} chunk(s) failed, first: {reader.errors[0][1]}")
        summary.update(reader={name: res[name] for name, _, _ in windows}, ratios=ratios,
                       reader_errors=len(reader.errors), probe_before=probe_before, probe_after=probe_after)
        print("RESULT " + json.dumps(summary))
        return 0 if not reader.errors else 1
    finally:
        if reader is not None and reader.is_alive():
            reader.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
