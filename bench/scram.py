#!/usr/bin/env python3
"""Connection setup rate with `auth = "scram"`: `pgbench -C -S` (a new connection, login
included, for every transaction) through pgveil and through PgBouncer with `auth_query`, with
TLS on both legs and without TLS, interleaved in one run (A B C ... A B C ...). Direct
PostgreSQL is shown as the reference.

    python3 bench/scram.py [--duration 10] [--rounds 2] [--clients 8]

Every login is SCRAM-SHA-256 against a verifier fetched with the same SECURITY DEFINER
function (README, "SCRAM termination"); with TLS, libpq binds to the certificate of whoever
it talks to (SCRAM-SHA-256-PLUS) and the upstream leg is `verify-full`. PgBouncer runs in
session mode twice: as usual (it keeps database connections and reuses them for the next
client) and with `server_lifetime = 0` (a database connection is used once); pgveil likewise
with its defaults (`server_reuse = true`: the same reuse) and with `server_reuse = false`.

Needs the PostgreSQL server binaries, pgbench, openssl and pgbouncer (installed with
apt-get when missing and run as root); builds pgveil in release mode.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import (  # noqa: E402
    IS_ROOT, Cluster, as_postgres, build_pgveil, free_port, load_average, proc_cpu_seconds, server_pid, wait_port,
)

SUPERUSER_PASSWORD = "postgres"
AUTH_PASSWORD = "auth-secret"
BENCH_PASSWORD = "bench-secret"
LOOKUP = "SELECT usename, passwd FROM pgveil.lookup($1)"


class ScramCluster(Cluster):
    """A cluster that authenticates every login with SCRAM, TLS optional."""

    def start(self, extra_conf=()):
        subprocess.run([str(ROOT / "scripts" / "local-postgres.sh"), "start", str(self.path), str(self.port),
                        "scram-sha-256"], check=True, env=dict(os.environ, PGVEIL_DEV_PASSWORD=SUPERUSER_PASSWORD))

    def env(self):
        env = super().env()
        env["PGPASSWORD"] = SUPERUSER_PASSWORD
        return env


def ensure_pgbouncer():
    if Path("/usr/sbin/pgbouncer").exists() or shutil.which("pgbouncer"):
        return
    if not IS_ROOT:
        sys.exit("pgbouncer is missing: apt-get install pgbouncer")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, env=env, stdout=subprocess.DEVNULL)


def make_certs(work):
    """A CA and a certificate for localhost / 127.0.0.1 signed by it (ECDSA P-256, SHA-256),
    used by PostgreSQL, pgveil and PgBouncer alike."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, cwd=work, capture_output=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
            "-out", "ca.crt", "-days", "2", "-subj", "/CN=pgveil bench CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=localhost")
    (work / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-sha256", "-extfile", "san.ext")
    os.chmod(work / "server.key", 0o600)


def prepare_cluster(cluster, work):
    data = cluster.path / "data"
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(work / name, data / name)
    if IS_ROOT:
        subprocess.run(["chown", "postgres:postgres", *(str(data / n) for n in ("server.crt", "server.key", "ca.crt"))],
                       check=True)
    cluster.psql("ALTER SYSTEM SET ssl = on")
    cluster.psql("SELECT pg_reload_conf()")
    cluster.psql(f"""
        CREATE ROLE pgveil_auth LOGIN PASSWORD '{AUTH_PASSWORD}';
        CREATE SCHEMA pgveil;
        CREATE FUNCTION pgveil.lookup(p_user text) RETURNS TABLE (usename name, passwd text)
          LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
          AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_user $$;
        REVOKE ALL ON FUNCTION pgveil.lookup(text) FROM PUBLIC;
        GRANT USAGE ON SCHEMA pgveil TO pgveil_auth;
        GRANT EXECUTE ON FUNCTION pgveil.lookup(text) TO pgveil_auth;
        CREATE ROLE bench LOGIN PASSWORD '{BENCH_PASSWORD}';
    """)
    subprocess.run([cluster.bin("pgbench"), "-i", "-q", "-s", "1", *cluster.conn_args(cluster.port)],
                   check=True, capture_output=True, env=cluster.env())
    cluster.psql("GRANT SELECT ON pgbench_accounts, pgbench_branches TO bench")


def start_pgveil(binary, work, port, upstream_port, tls, reuse=True):
    config = work / f"pgveil-{port}.toml"
    server_tls = 'tls_cert = "server.crt"\ntls_key = "server.key"\n' if tls else ""
    upstream_tls = 'tls = "verify-full"\nca_file = "ca.crt"\n' if tls else 'tls = "disable"\n'
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nlog_level = "warn"\n{server_tls}\n'
        f'[upstream]\nhost = "localhost"\nport = {upstream_port}\n{upstream_tls}'
        f'auth = "scram"\nauth_user = "pgveil_auth"\nauth_query = "{LOOKUP}"\n'
        + ("" if reuse else "server_reuse = false\n")
    )
    proc = subprocess.Popen([str(binary), "serve", "--config", str(config)],
                            stderr=open(work / f"pgveil-{port}.log", "w"),
                            env=dict(os.environ, PGVEIL_AUTH_PASSWORD=AUTH_PASSWORD))
    wait_port(port, proc, "pgveil")
    return proc


def start_pgbouncer(work, port, upstream_port, tls, reuse):
    name = f"pgbouncer-{port}"
    (work / f"{name}.users").write_text(f'"pgveil_auth" "{AUTH_PASSWORD}"\n')
    tls_lines = (
        f"client_tls_sslmode = allow\nclient_tls_cert_file = {work / 'server.crt'}\n"
        f"client_tls_key_file = {work / 'server.key'}\n"
        f"server_tls_sslmode = verify-full\nserver_tls_ca_file = {work / 'ca.crt'}\n"
        if tls else "client_tls_sslmode = disable\nserver_tls_sslmode = disable\n"
    )
    ini = work / f"{name}.ini"
    ini.write_text(
        "[databases]\n"
        f"postgres = host=localhost port={upstream_port} dbname=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {work / (name + '.users')}\n"
        f"auth_user = pgveil_auth\nauth_query = {LOOKUP}\n"
        "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 50\n"
        + ("" if reuse else "server_lifetime = 0\n")
        + tls_lines
        + f"logfile = {work / (name + '.log')}\npidfile = {work / (name + '.pid')}\n"
    )
    if IS_ROOT:
        subprocess.run(["chown", "-R", "postgres:postgres", str(work)], check=False)
    binary = "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else "pgbouncer"
    proc = subprocess.Popen(as_postgres([binary, "-q", str(ini)]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc, "pgbouncer")
    return proc


def connection_rate(cluster, port, tls, clients, duration):
    """`pgbench -C -S`: connections (= transactions) per second."""
    env = dict(cluster.env(), PGUSER="bench", PGPASSWORD=BENCH_PASSWORD,
               PGSSLMODE="require" if tls else "disable", PGCHANNELBINDING="prefer" if tls else "disable")
    cmd = [cluster.bin("pgbench"), "-n", "-C", "-S", "-T", str(duration), "-c", str(clients), "-j", "2",
           "-h", "localhost", "-p", str(port), "-U", "bench", "postgres"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed on port {port}: {out.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    txs = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
    return tps, txs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--binary", help="pgveil binary (default: cargo build --release)")
    ap.add_argument("--profile", metavar="FILE",
                    help="perf-record pgveil (TLS) during its runs and write the flat profile to FILE")
    args = ap.parse_args()

    ensure_pgbouncer()
    binary = build_pgveil(args.binary)
    work = Path(tempfile.mkdtemp(prefix="pgveil-bench-scram-"))
    os.chmod(work, 0o755)
    cluster = ScramCluster(work / "pg")
    procs = []
    try:
        make_certs(work)
        cluster.start()
        prepare_cluster(cluster, work)
        targets = []  # (tls, name, port, proc or None)
        for tls in (True, False):
            targets.append((tls, "PostgreSQL direct", cluster.port, None))
            for reuse in (True, False):
                veil_port = free_port()
                veil = start_pgveil(binary, work, veil_port, cluster.port, tls, reuse)
                procs.append(veil)
                label = "pgveil auth=scram" + ("" if reuse else ", server_reuse=false")
                targets.append((tls, label, veil_port, veil))
            for reuse in (True, False):
                port = free_port()
                bouncer = start_pgbouncer(work, port, cluster.port, tls, reuse)
                procs.append(bouncer)
                label = "PgBouncer auth_query" + ("" if reuse else ", server_lifetime=0")
                targets.append((tls, label, port, bouncer))
        rates = {(tls, name): [] for tls, name, _, _ in targets}
        cpu = {(tls, name): [0.0, 0] for tls, name, _, _ in targets}
        for _ in range(args.rounds):
            for tls, name, port, proc in targets:
                before = proc_cpu_seconds(server_pid(proc)) if proc else 0.0
                perf = None
                if args.profile and tls and name.startswith("pgveil"):
                    perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(proc.pid), "-o",
                                             str(work / "perf.data")], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                tps, txs = connection_rate(cluster, port, tls, args.clients, args.duration)
                if perf:
                    perf.send_signal(2)
                    perf.wait(timeout=60)
                if proc:
                    cpu[(tls, name)][0] += proc_cpu_seconds(server_pid(proc)) - before
                    cpu[(tls, name)][1] += txs
                rates[(tls, name)].append(tps)
        print(f"\npgbench -C -S, {args.clients} clients, {args.duration} s x {args.rounds} rounds, "
              f"load average {load_average()}")
        print(f"{'legs':<8} {'target':<40} {'conn/s':>8} {'vs PgBouncer':>13} {'proxy CPU ms/conn':>18}")
        for tls in (True, False):
            bouncer = statistics.median(rates[(tls, "PgBouncer auth_query")])
            for t, name, _, proc in targets:
                if t != tls:
                    continue
                rate = statistics.median(rates[(tls, name)])
                spent, conns = cpu[(tls, name)]
                per_conn = f"{1000 * spent / conns:.2f}" if proc and conns else "-"
                print(f"{'TLS' if tls else 'plain':<8} {name:<40} {rate:>8.1f} {rate / bouncer:>12.2f}x {per_conn:>18}")
        if args.profile:
            report = subprocess.run(["perf", "report", "-i", str(work / "perf.data"), "--no-children",
                                     "--sort", "dso,symbol", "--stdio", "-g", "none", "--percent-limit", "0.7"],
                                    capture_output=True, text=True)
            Path(args.profile).write_text(report.stdout)
            print(f"profile of pgveil (TLS runs): {args.profile}")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
