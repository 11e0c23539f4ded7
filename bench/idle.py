#!/usr/bin/env python3
"""Idle memory per logged-in connection (issue #14, "Memory"): pgveil's resident memory
(VmRSS, and the Rss of its anonymous memory from /proc/PID/smaps_rollup) with N idle
connections that have logged in and run one query, against one warm connection.

    python3 bench/idle.py --binary target/release/pgveil [--connections 1000]

The PHI configuration of bench/phi.py (protected columns, so each session reads its catalog
facts at login); trust auth; the cluster runs with max_connections = N + 50. Connections speak
the protocol from raw sockets (startup, `SELECT 1`), so no driver's memory is measured.
Prints KiB per connection (goal <= 16).

For 10,000 connections: each holds two descriptors in pgveil and one here, so the script
raises its own hard RLIMIT_NOFILE when it may (as root), which pgveil inherits (pgveil raises
its soft limit to the hard one itself); the cluster gets small per-backend settings. Opening
stops early, and says so, when the machine's MemAvailable falls below --min-available-mib
(10,000 PostgreSQL backends may not fit beside other work) or the database refuses more;
the figures are then per connection actually opened. Every connection runs `SELECT 1` once
more after the measurement, so all of them were served while the others stayed open."""
import argparse
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import (  # noqa: E402
    Cluster, as_postgres, build_pgveil, free_port, load_average, pgveil_keys, server_pid,
    start_pgveil,
)
from phi import SCHEMA, veil_config  # noqa: E402


def read_until_ready(sock):
    """Reads backend messages until ReadyForQuery; raises on ErrorResponse."""
    buf = b""
    while True:
        while len(buf) < 5:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            buf += chunk
        tag, length = buf[0:1], struct.unpack("!I", buf[1:5])[0]
        while len(buf) < 1 + length:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            buf += chunk
        body, buf = buf[5:1 + length], buf[1 + length:]
        if tag == b"E":
            raise RuntimeError(f"error: {body!r}")
        if tag == b"Z":
            return


def login(port):
    sock = socket.create_connection(("127.0.0.1", port))
    params = b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
    read_until_ready(sock)
    query = b"SELECT 1\0"
    sock.sendall(b"Q" + struct.pack("!I", 4 + len(query)) + query)
    read_until_ready(sock)
    return sock


def mem_available_mib():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def query_again(sock):
    query = b"SELECT 1\0"
    sock.sendall(b"Q" + struct.pack("!I", 4 + len(query)) + query)
    read_until_ready(sock)


def open_files_room(n):
    """Room for N sockets here and 2N in pgveil (which inherits the hard limit)."""
    want = 4 * n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        try:  # raising the hard limit needs CAP_SYS_RESOURCE (root)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    soft = min(hard, max(soft, want))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def memory_kib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    anon = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            anon = int(line.split()[1])
    return rss, anon


def small_backends(n):
    """Settings that let many backends fit: the lock table scales with max_connections."""
    if n <= 2000:
        return ""
    return "-c max_locks_per_transaction=16 -c work_mem=1MB -c maintenance_work_mem=16MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=None)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring")
    ap.add_argument("--min-available-mib", type=int, default=3072,
                    help="stop opening connections when the machine's MemAvailable falls below this")
    args = ap.parse_args()
    n = args.connections
    files = open_files_room(n)
    if 2 * n + 64 > files:
        print(f"note: the open-file hard limit is {files} and cannot be raised here (no CAP_SYS_RESOURCE); "
              f"pgveil holds two per session, so at most about {(files - 64) // 2} sessions fit")
    binary = build_pgveil(args.binary)
    work = Path(tempfile.mkdtemp(prefix="pgveil-idle-"))
    work.chmod(0o755)
    cluster = Cluster(work / "pg")
    procs, socks = [], []
    try:
        # Created by the project's script, then restarted with room for N backends.
        cluster.start()
        cluster.stop()
        data = work / "pg" / "data"
        pg_ctl = cluster.bin("pg_ctl")
        subprocess.run(as_postgres([pg_ctl, "start", "-w", "-t", "120", "-D", str(data), "-l", str(work / "pg" / "server.log"),
                                    "-o", f"-p {cluster.port} -k {work / 'pg'} -c listen_addresses=127.0.0.1 "
                                          f"-c max_connections={n + 50} -c shared_buffers=64MB {small_backends(n)}"]),
                       check=True, stdout=subprocess.DEVNULL)
        cluster.psql(SCHEMA)
        keys = pgveil_keys(binary, work / "keys")
        port = free_port()
        proc = start_pgveil(binary, work, port, cluster.port, veil_config(keys))
        procs.append(proc)
        pid = server_pid(proc)
        socks.append(login(port))  # the catalog is read and cached once
        time.sleep(args.settle)
        before = memory_kib(pid)
        start = time.time()
        stopped = None
        for i in range(n):
            if i % 100 == 0 and mem_available_mib() < args.min_available_mib:
                stopped = f"MemAvailable {mem_available_mib()} MiB < {args.min_available_mib} MiB"
                break
            try:
                socks.append(login(port))
            except (OSError, RuntimeError) as e:
                stopped = f"connection {i + 1} failed: {str(e)[:200]}"
                break
        opened = len(socks) - 1
        elapsed = time.time() - start
        time.sleep(args.settle)
        after = memory_kib(pid)
        per_rss = (after[0] - before[0]) / max(opened, 1)
        per_anon = (after[1] - before[1]) / max(opened, 1)
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        served = 0
        for s in socks[1:]:
            query_again(s)
            served += 1
        print(f"load average: {load_average()}")
        print(f"open-file limit here {files}; pgveil holds {fds} descriptors; MemAvailable {mem_available_mib()} MiB")
        if stopped:
            print(f"stopped at {opened} of {n} connections: {stopped}")
        print(f"{opened} idle logged-in connections (opened in {elapsed:.1f} s; all {served} served `SELECT 1` "
              f"again afterwards): VmRSS {before[0]} -> {after[0]} KiB, anonymous {before[1]} -> {after[1]} KiB")
        print(f"per connection: {per_rss:.1f} KiB VmRSS, {per_anon:.1f} KiB anonymous (goal <= 16 KiB)")
    finally:
        for s in socks:
            s.close()
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(as_postgres([cluster.bin("pg_ctl"), "stop", "-m", "immediate", "-D", str(work / "pg" / "data")]),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
