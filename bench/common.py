"""Shared pieces of the benchmarks: a throwaway cluster, pgveil and PgBouncer processes,
and pgbench runs."""
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0


def as_postgres(cmd):
    """PostgreSQL and PgBouncer refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if IS_ROOT else cmd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_pgveil(binary=None):
    """The release binary: `binary` as given, or `cargo build --release` (a no-op when up to date)."""
    if binary:
        return Path(binary).resolve()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return ROOT / "target" / "release" / "pgveil"


def load_average():
    """`uptime`'s three load averages, as a string, to print with every table."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def server_pid(proc):
    """The PID doing the work: under `runuser`, its child."""
    if IS_ROOT and proc.args and proc.args[0] == "runuser":
        for _ in range(100):
            try:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            time.sleep(0.02)
    return proc.pid


def proc_cpu_seconds(pid):
    """User + system CPU time of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Cluster:
    def __init__(self, path):
        self.path = Path(path)
        self.port = free_port()

    def bin(self, name):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        d = Path(out.stdout.strip()) if out.returncode == 0 else None
        if not d or not (d / "initdb").exists():
            d = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        return str(d / name)

    def start(self, extra_conf=()):
        subprocess.run([str(ROOT / "scripts" / "local-postgres.sh"), "start", str(self.path), str(self.port), "trust"],
                       check=True)

    def stop(self):
        subprocess.run([str(ROOT / "scripts" / "local-postgres.sh"), "stop", str(self.path)], check=False)

    def env(self):
        env = dict(os.environ)
        env.update(PGUSER="postgres", PGDATABASE="postgres", PGSSLMODE="disable")
        return env

    def conn_args(self, port):
        return ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"]

    def psql(self, sql, port=None):
        return subprocess.run([self.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql,
                               *self.conn_args(port or self.port)],
                              check=True, capture_output=True, text=True, env=self.env()).stdout


def wait_port(port, proc, what):
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {port}")


def start_pgveil(binary, work, port, upstream_port, extra=""):
    config = Path(work) / f"pgveil-{port}.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nlog_level = "warn"\n\n'
        f'[upstream]\nhost = "127.0.0.1"\nport = {upstream_port}\ntls = "disable"\n{extra}'
    )
    proc = subprocess.Popen([str(binary), "serve", "--config", str(config)], stderr=open(Path(work) / f"pgveil-{port}.log", "w"))
    wait_port(port, proc, "pgveil")
    return proc


def start_pgbouncer(work, port, upstream_port):
    work = Path(work)
    (work / "userlist.txt").write_text('"postgres" ""\n')
    ini = work / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"postgres = host=127.0.0.1 port={upstream_port} dbname=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {work / 'userlist.txt'}\n"
        "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 50\n"
        f"logfile = {work / 'pgbouncer.log'}\n"
    )
    if IS_ROOT:
        subprocess.run(["chown", "-R", "postgres:postgres", str(work)], check=False)
    binary = "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else "pgbouncer"
    proc = subprocess.Popen(as_postgres([binary, str(ini)]))
    wait_port(port, proc, "pgbouncer")
    return proc


def protected_config(keys, table, columns, audit_dir=None):
    """The pgveil config beyond [server]/[upstream] for one protected table: the master key in
    `keys`, an audit log in `audit_dir` when given (scope "protected", signed with `keys`'s
    audit key), plaintext access by default, `public.<table>` with subject `id`, and its
    `columns` as (name, type, encryption)."""
    audit = ""
    if audit_dir:
        audit = (f'[audit]\ndir = "{audit_dir}"\nscope = "protected"\n'
                 f'signing_key_file = "{keys / "audit.key"}"\n\n')
    column_tables = "".join(
        f'\n[[column]]\ntable = "public.{table}"\ncolumn = "{name}"\ntype = "{ty}"\nencryption = "{mode}"\n'
        for name, ty, mode in columns)
    return (f'\n[keys]\nmaster_key_file = "{keys / "master.key"}"\n\n{audit}'
            '[policy]\ndefault_access = "plaintext"\n\n'
            f'[[table]]\nname = "public.{table}"\nsubject = "id"\n{column_tables}')


def pgveil_keys(binary, directory):
    """`pgveil keys init`: DIR/master.key, DIR/audit.key, DIR/audit.pub."""
    subprocess.run([str(binary), "keys", "init", "--dir", str(directory)], check=True, capture_output=True)
    return Path(directory)


class SyscallCount:
    """Counts fsync/fdatasync calls of one process (all its threads, also those started later)
    with `perf stat` on the syscall tracepoints: counted in the kernel, no ptrace stop per call,
    so unlike `strace -c` it does not slow the process it measures."""

    EVENTS = ("syscalls:sys_enter_fsync", "syscalls:sys_enter_fdatasync")

    def __init__(self, pid, out_file):
        self.out_file = Path(out_file)
        self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(self.EVENTS), "-p", str(pid),
                                      "-o", str(self.out_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # let perf attach before the measured run starts

    def stop(self):
        """Returns {"fsync": n, "fdatasync": n}."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        counts = {}
        for line in self.out_file.read_text().splitlines():
            parts = line.split(",")
            if len(parts) >= 3 and parts[2].startswith("syscalls:sys_enter_"):
                name = parts[2].removeprefix("syscalls:sys_enter_")
                counts[name] = int(parts[0]) if parts[0].isdigit() else 0
        return counts


def run_pgbench(cluster, port, workload_args, mode, clients, duration, script=None):
    """Returns (tps, average latency ms, transactions)."""
    threads = 2 if clients > 1 else 1
    cmd = [cluster.bin("pgbench"), "-n", "-T", str(duration), "-c", str(clients), "-j", str(threads), "-M", mode,
           *workload_args, *cluster.conn_args(port)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env())
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout).group(1))
    lat = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))
    txs = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
    return tps, lat, txs
