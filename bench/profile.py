#!/usr/bin/env python3
"""Where pgveil spends its time: `perf record` on the pgveil process while pgbench runs,
then its samples grouped by what the code does.

    python3 bench/profile.py phi   [--mode prepared] [--clients 1] [--duration 10]
    python3 bench/profile.py relay [--mode prepared] [--clients 1] [--duration 10]
    python3 bench/profile.py phi --callgraph     # + inclusive time of pgveil's own functions (DWARF unwinding)

    python3 bench/profile.py phi --audit         # with [audit] scope = "protected"

phi:   bench/phi.py's PHI workload (INSERT + SELECT by ssn on the encrypted table).
twin:  the same workload on the plaintext twin table, through the same pgveil config.
relay: pgbench -S (select-only) through pgveil as a plain relay (no [[column]]), like bench/relay.py.

Prints the top symbols by self time and the self time per group (crypto, SQL analysis,
value codec, protocol framing/relay, allocation/copying, async runtime/scheduling, kernel
network/syscalls, kernel other). Keeps perf.data in --out (default /tmp/pgveil-profile-WORKLOAD)
for `perf report -i`.
"""
import argparse
import json
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import Cluster, build_pgveil, free_port, load_average, run_pgbench, start_pgveil  # noqa: E402
import phi  # noqa: E402

# First match wins; matched against "dso symbol".
GROUPS = [
    ("crypto (AES-GCM-SIV, HMAC/SHA-256, HKDF, RNG)",
     r"aes|gcm|siv|polyval|ghash|hmac|sha2|sha256|hkdf|ed25519|curve25519|pgveil::crypto::(envelope|keys)|"
     r"rand::|rand_core|chacha|getrandom|zeroize|subtle::"),
    ("value codec (canonical encoding, text/binary, dates)", r"pgveil::pgtype|chrono|rust_decimal|uuid::"),
    ("SQL analysis (fast scan, parser, plan, rewrite, plan cache)",
     r"sqlparser|pgveil::sql|pgveil::veil|fingerprint|may_touch_protected|contains_ignore_ascii_case"),
    ("audit (records, JSON, hash chain)", r"pgveil::audit|serde_json|serde::"),
    ("protected relay / policy (pgveil::session::protected, policy, masks)", r"pgveil::session::protected|pgveil::policy"),
    ("protocol framing / relay (net, session, bytes)", r"pgveil::net|pgveil::session|bytes::|pgveil::metrics|metrics::"),
    ("hashing / collections (HashMap, SipHash)", r"hashbrown|siphash|core::hash|std::collections"),
    ("allocation / copying (malloc, free, memcpy)",
     r"\] (malloc|free|realloc|calloc|_int_|__rust_(alloc|dealloc|realloc)|__mem(move|cpy|set|cmp)|cfree|tcache|"
     r"unlink_chunk|malloc_consolidate)|alloc::|core::fmt|alloc::fmt"),
    ("perf's own tracepoint overhead", r"perf_"),
    ("kernel block I/O (fdatasync: ext4/jbd2, virtio kick)",
     r"\[kernel.*(iowrite|ioread|blk_|bio_|_bio|ext4|jbd2|virtqueue|virtio|filemap|writeback|file_write_and_wait|"
     r"mpage|submit_|folio|fdatasync|vfs_fsync|dm_|nvme|scsi)"),
    ("kernel scheduling / wakeups (context switch, epoll, futex)",
     r"\[kernel.*(finish_task_switch|__schedule|schedule\b|switch_to|pick_next|try_to_wake_up|ttwu|enqueue|dequeue|"
     r"update_curr|update_load|select_task|ep_poll|epoll|futex|hrtimer|psi_|idle)"),
    ("kernel network / syscalls (TCP loopback, socket I/O; IRQ-restore points, see README)",
     r"\[kernel.*(tcp_|ip_|__sys_|sock|skb|entry_SYSCALL|do_syscall|syscall|x64_sys|net_rx|netif|loopback|"
     r"copy_user|_copy_to|_copy_from|release_sock|lock_sock|inet_|__dev_queue|dev_hard|process_backlog|"
     r"__local_bh|do_softirq|handle_softirqs|fib_|nf_|rep_movs|ksys_|vfs_|fdget|_raw_spin_unlock_irq|"
     r"__check_object_size|__virt_addr_valid|kmem_cache|kfree|__alloc_skb|__rcu_read|read_tsc)"),
    ("async runtime (tokio, mio, epoll_wait, parking)", r"tokio::|mio::|parking_lot|std::sync|std::thread|"
     r"epoll_wait|__pthread|pthread_|syscall$|\bfutex"),
    ("libc socket calls", r"__send|__recv|__libc_(read|write|recv|send)"),
]
# Kernel groups match kernel samples only, the others user-space samples only.
COMPILED = [(name, re.compile(rx), name.startswith(("kernel", "perf"))) for name, rx in GROUPS]
STAT_EVENTS = ["raw_syscalls:sys_enter", "context-switches", "task-clock",
               *(f"syscalls:sys_enter_{n}" for n in ("recvfrom", "read", "sendto", "write", "writev", "epoll_wait",
                                                       "futex", "fdatasync", "fsync"))]
LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*)$")


def group_of(dso, kind, sym):
    text = f"{dso} [{kind}] {sym}" if kind == "." else f"[kernel] {sym}"
    for name, rx, kernel in COMPILED:
        if kernel == (kind == "k") and rx.search(text):
            return name
    if kind == "k":
        return "kernel other"
    return "other"


def start_relay_env(binary, work, scale):
    cluster = Cluster(Path(work) / "pg")
    cluster.start()
    subprocess.run([cluster.bin("pgbench"), "-i", "-q", "-s", str(scale), *cluster.conn_args(cluster.port)],
                   check=True, capture_output=True, env=cluster.env())
    port = free_port()
    proc = start_pgveil(binary, work, port, cluster.port)
    return cluster, port, proc


def main():
    # Stop cleanly (cluster, pgveil, temp dir) on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=("phi", "twin", "relay"))
    ap.add_argument("--mode", default="prepared")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--freq", type=int, default=1999, help="perf sampling frequency (Hz)")
    ap.add_argument("--callgraph", action="store_true",
                    help="record DWARF call graphs and print inclusive time of pgveil functions")
    ap.add_argument("--audit", action="store_true", help="phi/twin: pgveil with [audit] scope = protected")
    ap.add_argument("--binary")
    ap.add_argument("--out", help="directory for perf.data (default /tmp/pgveil-profile-WORKLOAD)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--report-only", action="store_true", help="only print the report of an earlier run in --out")
    args = ap.parse_args()
    out = Path(args.out or f"/tmp/pgveil-profile-{args.workload}")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "perf.data"
    if args.report_only:
        report(out, json.loads((out / "meta.json").read_text()), args.top, args.callgraph)
        return

    binary = build_pgveil(args.binary)
    env = phi.Env(binary, args.rows)
    cluster = None
    try:
        if args.workload in ("phi", "twin"):
            env.start()
            audit_dir = None
            if args.audit:
                audit_dir = env.work / "audit"
                audit_dir.mkdir()
            port, proc = env.pgveil(audit_dir=audit_dir)
            env.preload(port)
            table = phi.PROTECTED if args.workload == "phi" else phi.TWIN
            bench_args = ["-f", str(env.scripts[(table, args.mode)]), "-D", f"note={phi.NOTE}"]
            cluster, per_tx = env.cluster, phi.STATEMENTS_PER_TX
        else:
            cluster, port, proc = start_relay_env(binary, env.work, 10)
            env.procs.append(proc)
            env.cluster = cluster
            bench_args, per_tx = ["-S"], 1
        # warm up (plan cache, catalog, connections), then record
        run_pgbench(cluster, port, bench_args, args.mode, args.clients, 2)
        cg = ["--call-graph", "dwarf,16384"] if args.callgraph else ["-g"]
        perf = subprocess.Popen(["perf", "record", "-q", "-F", str(args.freq), *cg, "-p", str(proc.pid),
                                 "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stat = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(STAT_EVENTS), "-p", str(proc.pid),
                                 "-o", str(out / "perf-stat.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        load = load_average()
        tps, lat, txs = run_pgbench(cluster, port, bench_args, args.mode, args.clients, args.duration)
        for p in (perf, stat):
            p.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
        stat.wait(timeout=30)
    finally:
        env.close()

    meta = {"title": f"{args.workload}{' with [audit]' if args.audit else ''} -M {args.mode} -c {args.clients}",
            "tps": tps, "lat": lat, "txs": txs, "per_tx": per_tx, "load": load, "freq": args.freq}
    (out / "meta.json").write_text(json.dumps(meta))
    report(out, meta, args.top, args.callgraph)


def report(out, meta, top_n, callgraph):
    data = out / "perf.data"
    tps, lat, txs, per_tx, load = meta["tps"], meta["lat"], meta["txs"], meta["per_tx"], meta["load"]
    print(f"{meta['title']}: {tps:.0f} TPS, {lat:.3f} ms avg latency, "
          f"{txs} transactions ({per_tx} statement(s) each); load average {load}")
    print("\nPer transaction (perf stat on the pgveil process during the same run):\n")
    print("| event | per transaction | per statement |\n|---|---:|---:|")
    for line in (out / "perf-stat.txt").read_text().splitlines():
        parts = line.split(",")
        if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
            continue
        value, name = float(parts[0]), parts[2].removeprefix("syscalls:sys_enter_")
        if name == "task-clock":  # ms
            name, value = "CPU µs (task-clock)", value * 1000
        print(f"| {name} | {value / txs:.2f} | {value / txs / per_tx:.2f} |")
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio",
                             "-g", "none", "--percent-limit", "0"], capture_output=True, text=True)
    groups = defaultdict(float)
    top = []
    for line in report.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        g = group_of(dso, kind, sym)
        groups[g] += pct
        top.append((pct, dso, kind, sym, g))
    print(f"\nSelf time by group (perf record -F {meta['freq']}, all threads of pgveil, user + kernel):\n")
    print("| group | % of pgveil samples |\n|---|---:|")
    for g, pct in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {pct:.1f} |")
    print(f"\nTop {top_n} symbols by self time:\n")
    print("| % | where | symbol | group |\n|---:|---|---|---|")
    for pct, dso, kind, sym, g in top[:top_n]:
        short = sym if len(sym) <= 110 else sym[:107] + "..."
        print(f"| {pct:.2f} | {dso} [{kind}] | `{short}` | {g.split(' (')[0]} |")

    if callgraph:
        rep = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "sym", "--stdio", "-g", "none",
                              "--percent-limit", "1"], capture_output=True, text=True)
        print("\nInclusive time (children) of pgveil's functions, >= 1%:\n")
        print("| inclusive % | self % | symbol |\n|---:|---:|---|")
        rx = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[([.k])\]\s+(.*)$")
        for line in rep.stdout.splitlines():
            m = rx.match(line)
            if m and "pgveil::" in m.group(4):
                sym = m.group(4).strip()
                print(f"| {m.group(1)} | {m.group(2)} | `{sym[:120]}` |")
    print(f"\nperf data: {data}  (perf report -i {data} --no-children --sort dso,sym)")


if __name__ == "__main__":
    main()
