#!/usr/bin/env python3
"""Relay benchmark: pgbench directly against PostgreSQL, through pgveil, and through
PgBouncer (session mode), interleaved in one run (A B C A B C ...), so all three see the
same machine state. Prints TPS, average latency, the ratio to direct, the latency each proxy
adds, and the proxy's own CPU time per transaction.

    python3 bench/relay.py [--duration 5] [--rounds 3] [--scale 10] [--quick]

Needs the PostgreSQL server binaries, pgbench and pgbouncer (Debian: postgresql,
postgresql-contrib, pgbouncer); builds pgveil in release mode.
"""
import argparse
import os
import re
import shutil
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
    Cluster, free_port, proc_cpu_seconds, run_pgbench, server_pid, start_pgbouncer, start_pgveil, build_pgveil,
)

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
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 3, 1
    workloads = ["select-only"] if args.quick else list(WORKLOADS)

    binary = build_pgveil()
    work = Path(tempfile.mkdtemp(prefix="pgveil-bench-"))
    os.chmod(work, 0o755)
    cluster = Cluster(work / "pg")
    procs = []
    try:
        cluster.start()
        subprocess.run([cluster.bin("pgbench"), "-i", "-q", "-s", str(args.scale), *cluster.conn_args(cluster.port)],
                       check=True, capture_output=True, env=cluster.env())
        veil_port = free_port()
        veil = start_pgveil(binary, work, veil_port, cluster.port)
        procs.append(veil)
        bouncer_port = free_port()
        bouncer = start_pgbouncer(work, bouncer_port, cluster.port)
        procs.append(bouncer)
        targets = {"direct": (cluster.port, None), "pgveil": (veil_port, veil.pid), "pgbouncer": (bouncer_port, server_pid(bouncer))}

        results = {}  # (workload, mode, clients, target) -> list of (tps, latency_ms, cpu_us_per_tx)
        configs = [(w, m, c) for w in workloads for m in ("simple", "extended", "prepared") for c in (8, 1)]
        for rnd in range(args.rounds):
            for (workload, mode, clients) in configs:
                for target, (port, pid) in targets.items():
                    cpu_before = proc_cpu_seconds(pid) if pid else 0.0
                    tps, lat, txs = run_pgbench(cluster, port, WORKLOADS[workload][0], mode, clients, args.duration)
                    cpu = (proc_cpu_seconds(pid) - cpu_before) if pid else 0.0
                    cpu_us = cpu * 1e6 / txs if txs and pid else 0.0
                    results.setdefault((workload, mode, clients, target), []).append((tps, lat, cpu_us))
                    print(f"round {rnd + 1} {workload:11} {mode:8} c={clients} {target:9} tps={tps:9.0f} lat={lat:7.3f} ms",
                          file=sys.stderr, flush=True)
        report(results, configs, targets)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(results, configs, targets):
    print()
    print("| workload | mode | clients | target | TPS | avg latency ms | ratio to direct | added µs/statement | proxy CPU µs/tx |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    summary = []
    for (workload, mode, clients) in configs:
        per_stmt = WORKLOADS[workload][1]
        direct = results[(workload, mode, clients, "direct")]
        d_tps = statistics.median(r[0] for r in direct)
        d_lat = statistics.median(r[1] for r in direct)
        ratios = {}
        for target in targets:
            rows = results[(workload, mode, clients, target)]
            tps = statistics.median(r[0] for r in rows)
            lat = statistics.median(r[1] for r in rows)
            cpu = statistics.median(r[2] for r in rows)
            ratio = tps / d_tps if d_tps else 0.0
            ratios[target] = ratio
            added = (lat - d_lat) * 1000 / per_stmt
            print(f"| {workload} | {mode} | {clients} | {target} | {tps:.0f} | {lat:.3f} | {ratio:.3f} | "
                  f"{added if target != 'direct' else 0:.1f} | {cpu:.1f} |")
        if ratios.get("pgbouncer"):
            summary.append((workload, mode, clients, ratios["pgveil"], ratios["pgbouncer"]))
    print()
    print("| workload | mode | clients | pgveil ratio | pgbouncer ratio | pgveil / pgbouncer |")
    print("|---|---|---|---:|---:|---:|")
    for workload, mode, clients, v, b in summary:
        print(f"| {workload} | {mode} | {clients} | {v:.3f} | {b:.3f} | {v / b:.2f} |")


if __name__ == "__main__":
    main()
