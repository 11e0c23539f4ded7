#!/usr/bin/env python3
"""Relay benchmark: pgbench directly against PostgreSQL, through pgveil, and through
PgBouncer (session mode), interleaved in one run (A B C A B C ...), so all three see the
same machine state. Prints TPS, average latency, the ratio to direct, the latency each proxy
adds, and the proxy's own CPU time per transaction.

    python3 bench/relay.py [--binary B] [--base OLD] [--duration 5] [--rounds 3] [--scale 10]
                           [--quick] [--modes simple,extended,prepared] [--clients 8,1] [--syscalls]

`--base OLD` adds a second pgveil (another binary) as target "pgveil-base", for A/B runs of a
change. `--syscalls` runs `perf stat` on each proxy during each pgbench run and adds its
syscalls, context switches and CPU per statement (counted in the kernel: robust under load).

Needs the PostgreSQL server binaries, pgbench and pgbouncer (Debian: postgresql,
postgresql-contrib, pgbouncer); builds pgveil in release mode.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import (  # noqa: E402
    Cluster, free_port, load_average, proc_cpu_seconds, run_pgbench, server_pid, start_pgbouncer, start_pgveil,
    build_pgveil, wait_port,
)

# perf stat events per proxy run (--syscalls); reported per statement.
PERF_EVENTS = ["task-clock", "context-switches", "raw_syscalls:sys_enter"] + [
    f"syscalls:sys_enter_{name}" for name in
    ("recvfrom", "sendto", "read", "write", "readv", "writev", "epoll_wait", "epoll_ctl", "futex")]

WORKLOADS = {
    # name: (pgbench args, statements per transaction)
    "select-only": (["-S"], 1),
    "tpcb-like": ([], 7),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="select-only, one round, 3 s runs")
    ap.add_argument("--binary", help="pgveil binary (default: cargo build --release)")
    ap.add_argument("--base", help="a second pgveil binary, run as target pgveil-base (A/B)")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--clients", default="8,1")
    ap.add_argument("--workloads", help="comma-separated, of " + ",".join(WORKLOADS))
    ap.add_argument("--no-direct", action="store_true", help="skip the direct target (then no ratios/added latency)")
    ap.add_argument("--workers", help="[server] workers for pgveil; with --base, 'A,B' gives each its own")
    ap.add_argument("--syscalls", action="store_true", help="perf stat syscalls/context switches per statement")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 3, 1
    workloads = ["select-only"] if args.quick else list(WORKLOADS)
    if args.workloads:
        workloads = args.workloads.split(",")

    binary = build_pgveil(args.binary)
    work = Path(tempfile.mkdtemp(prefix="pgveil-bench-"))
    os.chmod(work, 0o755)
    cluster = Cluster(work / "pg")
    procs = []
    try:
        cluster.start()
        subprocess.run([cluster.bin("pgbench"), "-i", "-q", "-s", str(args.scale), *cluster.conn_args(cluster.port)],
                       check=True, capture_output=True, env=cluster.env())
        veil_port = free_port()
        workers = (args.workers or "").split(",")
        veil = start_relay(binary, work, veil_port, cluster.port, workers[0])
        procs.append(veil)
        targets = {} if args.no_direct else {"direct": (cluster.port, None)}
        targets["pgveil"] = (veil_port, veil.pid)
        if args.base:
            base_port = free_port()
            base = start_relay(build_pgveil(args.base), work, base_port, cluster.port, workers[-1])
            procs.append(base)
            targets["pgveil-base"] = (base_port, base.pid)
        bouncer_port = free_port()
        bouncer = start_pgbouncer(work, bouncer_port, cluster.port)
        procs.append(bouncer)
        targets["pgbouncer"] = (bouncer_port, server_pid(bouncer))

        print(f"load average at start: {load_average()}", flush=True)
        results = {}  # (workload, mode, clients, target) -> list of (tps, latency_ms, cpu_us_per_tx, perf counts)
        configs = [(w, m, int(c)) for w in workloads for m in args.modes.split(",") for c in args.clients.split(",")]
        for rnd in range(args.rounds):
            for (workload, mode, clients) in configs:
                for target, (port, pid) in targets.items():
                    perf = PerfStat(pid, work / "perf-stat.txt") if pid and args.syscalls else None
                    cpu_before = proc_cpu_seconds(pid) if pid else 0.0
                    tps, lat, txs = run_pgbench(cluster, port, WORKLOADS[workload][0], mode, clients, args.duration)
                    cpu = (proc_cpu_seconds(pid) - cpu_before) if pid else 0.0
                    counts = perf.stop() if perf else {}
                    cpu_us = cpu * 1e6 / txs if txs and pid else 0.0
                    per_stmt = {k: v / (txs * WORKLOADS[workload][1]) for k, v in counts.items()} if txs else {}
                    results.setdefault((workload, mode, clients, target), []).append((tps, lat, cpu_us, per_stmt))
                    print(f"round {rnd + 1} {workload:11} {mode:8} c={clients} {target:11} tps={tps:9.0f} lat={lat:7.3f} ms",
                          file=sys.stderr, flush=True)
            print(f"load average after round {rnd + 1}: {load_average()}", flush=True)
        report(results, configs, targets)
        if args.syscalls:
            report_syscalls(results, configs, targets)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def start_relay(binary, work, port, upstream_port, workers):
    """pgveil as a plain relay; `workers` (if not empty) sets `[server] workers`."""
    if not workers:
        return start_pgveil(binary, work, port, upstream_port)
    config = Path(work) / f"pgveil-{port}.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nlog_level = "warn"\nworkers = {int(workers)}\n\n'
        f'[upstream]\nhost = "127.0.0.1"\nport = {upstream_port}\ntls = "disable"\n'
    )
    proc = subprocess.Popen([str(binary), "serve", "--config", str(config)],
                            stderr=open(Path(work) / f"pgveil-{port}.log", "w"))
    wait_port(port, proc, "pgveil")
    return proc


def report(results, configs, targets):
    print()
    print("| workload | mode | clients | target | TPS | avg latency ms | ratio to direct | added µs/statement | proxy CPU µs/tx |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    summary = []
    cpu_summary = []
    for (workload, mode, clients) in configs:
        per_stmt = WORKLOADS[workload][1]
        direct = results.get((workload, mode, clients, "direct"))
        d_tps = statistics.median(r[0] for r in direct) if direct else 0.0
        d_lat = statistics.median(r[1] for r in direct) if direct else 0.0
        ratios = {}
        for target in targets:
            rows = results[(workload, mode, clients, target)]
            tps = statistics.median(r[0] for r in rows)
            lat = statistics.median(r[1] for r in rows)
            cpu = statistics.median(r[2] for r in rows)
            ratio = tps / d_tps if d_tps else 0.0
            ratios[target] = ratio
            added = (lat - d_lat) * 1000 / per_stmt if direct else 0.0
            print(f"| {workload} | {mode} | {clients} | {target} | {tps:.0f} | {lat:.3f} | {ratio:.3f} | "
                  f"{added if target != 'direct' else 0:.1f} | {cpu:.1f} |")
        if ratios.get("pgbouncer"):
            summary.append((workload, mode, clients, ratios["pgveil"], ratios["pgbouncer"]))
        cpu = {t: statistics.median(r[2] for r in results[(workload, mode, clients, t)]) for t in targets}
        if cpu.get("pgbouncer"):
            cpu_summary.append((workload, mode, clients, cpu))
    print()
    print("| workload | mode | clients | pgveil ratio | pgbouncer ratio | pgveil / pgbouncer |")
    print("|---|---|---|---:|---:|---:|")
    for workload, mode, clients, v, b in summary:
        print(f"| {workload} | {mode} | {clients} | {v:.3f} | {b:.3f} | {v / b:.2f} |")
    print()
    proxies = [t for t in targets if t not in ("direct", "pgbouncer")]
    print("| workload | mode | clients | " + " | ".join(f"{t} CPU / pgbouncer's" for t in proxies) + " |")
    print("|---|---|---|" + "---:|" * len(proxies))
    for workload, mode, clients, cpu in cpu_summary:
        cells = " | ".join(f"{cpu[t] / cpu['pgbouncer']:.2f} ({cpu[t]:.1f} / {cpu['pgbouncer']:.1f} µs)" for t in proxies)
        print(f"| {workload} | {mode} | {clients} | {cells} |")


def report_syscalls(results, configs, targets):
    """Per statement, medians over rounds, from perf stat on each proxy."""
    names = [e.removeprefix("syscalls:sys_enter_").replace("raw_syscalls:sys_enter", "all syscalls") for e in PERF_EVENTS]
    print()
    print("Per statement (perf stat on the proxy process):")
    print()
    print("| workload | mode | clients | target | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---:|" * len(names))
    for (workload, mode, clients) in configs:
        for target, (_, pid) in targets.items():
            if not pid:
                continue
            rows = [r[3] for r in results[(workload, mode, clients, target)]]
            cells = []
            for event in PERF_EVENTS:
                value = statistics.median(r.get(event, 0.0) for r in rows)
                cells.append(f"{value / 1000:.1f} µs" if event == "task-clock" else f"{value:.2f}")
            print(f"| {workload} | {mode} | {clients} | {target} | " + " | ".join(cells) + " |")


class PerfStat:
    """`perf stat` on one process (all threads) for the length of a pgbench run."""

    def __init__(self, pid, out_file):
        self.out_file = Path(out_file)
        self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(PERF_EVENTS), "-p", str(pid),
                                      "-o", str(self.out_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # let perf attach before the run starts

    def stop(self):
        """{event: count}; task-clock in ns (perf reports msec)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        counts = {}
        for line in self.out_file.read_text().splitlines():
            parts = line.split(",")
            if len(parts) >= 3 and parts[2] in PERF_EVENTS:
                try:
                    value = float(parts[0])
                except ValueError:
                    value = 0.0
                counts[parts[2]] = value * 1e6 if parts[2] == "task-clock" else value
        return counts


if __name__ == "__main__":
    main()
