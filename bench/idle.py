#!/usr/bin/env python3
"""Idle memory per logged-in connection (issue #14, "Memory"): pgveil's resident memory
(VmRSS, and the Rss of its anonymous memory from /proc/PID/smaps_rollup) with N idle
connections that have logged in and run one query, against one warm connection.

    python3 bench/idle.py --binary target/release/pgveil [--connections 1000]

The PHI configuration of bench/phi.py (protected columns, so each session reads its catalog
facts at login); trust auth; the cluster runs with max_connections = N + 50. Connections speak
the protocol from raw sockets (startup, `SELECT 1`), so no driver's memory is measured.
Prints KiB per connection (goal <= 16)."""
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


def memory_kib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    anon = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            anon = int(line.split()[1])
    return rss, anon


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=None)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring")
    args = ap.parse_args()
    n = args.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * n + 1024)), hard))
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
                                          f"-c max_connections={n + 50} -c shared_buffers=64MB"]),
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
        for _ in range(n):
            socks.append(login(port))
        opened = time.time() - start
        time.sleep(args.settle)
        after = memory_kib(pid)
        per_rss = (after[0] - before[0]) / n
        per_anon = (after[1] - before[1]) / n
        print(f"load average: {load_average()}")
        print(f"{n} idle logged-in connections (opened in {opened:.1f} s): "
              f"VmRSS {before[0]} -> {after[0]} KiB, anonymous {before[1]} -> {after[1]} KiB")
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
