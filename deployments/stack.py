"""A shared Prefect stack on one machine: PostgreSQL, the server, two work pools, workers that share nothing.

    python -m deployments.stack up --dir ~/so8t-stack            # PostgreSQL, server, pools, deployments, workers
    python -m deployments.stack status --dir ~/so8t-stack
    python -m deployments.stack down --dir ~/so8t-stack [--purge]

``up`` brings up, each step skipped when already done (``up`` again after ``down`` restarts the same
database):

1. **PostgreSQL** (Debian's, ``apt-get install postgresql`` when ``pg_ctl`` is missing and we are root):
   an own cluster (``initdb``) started with ``pg_ctl`` on 127.0.0.1 only, no systemd; as root it runs as
   the ``postgres`` OS user. A ``prefect`` role with a random password (kept in ``<dir>/stack.json``,
   mode 0600) owns the ``prefect`` database.
2. **``prefect server start``** on 127.0.0.1 against it
   (``PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:...@127.0.0.1:PORT/prefect``,
   the legacy name ``PREFECT_API_DATABASE_CONNECTION_URL`` works too; ``asyncpg`` is the driver).
3. The process work pools **so8t-gpu** (training) and **so8t-cpu** (calibration, A/B, promotion,
   rollback) and the **zombie detection** automation (``deployments/zombie_flow_runs.yaml``): a flow run
   whose heartbeats stop (workers send one every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` s, set here to
   30, Prefect's minimum) is marked Crashed after ``--zombie-after`` seconds.
4. **``prefect deploy --all``** (``prefect.yaml``): its build step records the git repository and commit
   (:mod:`deployments.source`), its pull step clones them in every flow run.
5. **Workers**, one per pool by default, each in its own empty directory ``<dir>/workers/<name>``
   with its own registry (``SO8T_REGISTRY``), stage outputs and Prefect cache records
   (``SO8T_WORK_DIR``), Prefect home and result storage, Hugging Face cache and scratch directory
   (``TMPDIR``: each flow run clones the code there). No ``PYTHONPATH`` and no checkout: the code
   comes from the git clone, versions travel through the Hub mirror (``SO8T_HF_REPO``,
   ``SO8T_HF_ENDPOINT``, ``HF_TOKEN`` are passed on from the environment), coordination through the
   server.

Every process runs in its own session with its log in ``<dir>/logs``; ``down`` stops them (SIGTERM,
then SIGKILL after 20 s) and PostgreSQL (``pg_ctl stop -m fast``); ``--purge`` also deletes the
database cluster and ``<dir>``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployments.source import REPO, git_source, snapshot_worktree

POOLS = {"gpu": "so8t-gpu", "cpu": "so8t-cpu"}
ZOMBIE_FILE = Path(__file__).with_name("zombie_flow_runs.yaml")
HEARTBEAT_S = 30  # Prefect's minimum flow-run heartbeat interval
STATE = "stack.json"
#: passed from the caller's environment to the workers (the Hub mirror and its credentials)
PASS_ENV = ("SO8T_HF_REPO", "SO8T_HF_ENDPOINT", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_XET",
            "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_OFFLINE")


class StackError(RuntimeError):
    """A part of the stack could not be brought up (the message says which and why)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ----------------------------------------------------------------------------- PostgreSQL
def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` (Debian), else the directory of ``pg_ctl`` on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def ensure_postgres_installed(install: bool = True) -> Path:
    """The PostgreSQL binaries, installed with apt when missing (root only); :class:`StackError` otherwise."""
    bin_dir = find_pg_bin()
    if bin_dir is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise StackError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[-500:]}")
        bin_dir = find_pg_bin()
    if bin_dir is None:
        raise StackError("PostgreSQL is not installed (no pg_ctl): sudo apt-get install -y postgresql")
    return bin_dir


@dataclass
class Postgres:
    """An own PostgreSQL cluster in ``dir`` listening on 127.0.0.1:``port`` (and a Unix socket in ``dir``)."""

    dir: str
    port: int
    bin_dir: str
    password: str
    os_user: str | None = None  # run as this user (we are root); None: as ourselves

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://prefect:{self.password}@127.0.0.1:{self.port}/prefect"

    def _run(self, args: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        kw: dict[str, Any] = {}
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=self.dir, **kw)
        if check and r.returncode != 0:
            raise StackError(f"{Path(args[0]).name} failed: {(r.stderr or r.stdout).strip()[-800:]}")
        return r

    def _bin(self, name: str) -> str:
        return str(Path(self.bin_dir) / name)

    @property
    def data(self) -> Path:
        return Path(self.dir) / "data"

    def init(self) -> None:
        """``initdb`` (once), 127.0.0.1 only, password logins over TCP, the socket only for the owner."""
        d = Path(self.dir)
        d.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(d, pw.pw_uid, pw.pw_gid)
            if self._run(["test", "-w", str(d)], check=False).returncode != 0:
                raise StackError(f"the PostgreSQL directory {d} is not writable by the {self.os_user!r} OS user "
                                 f"(a parent directory is private): give a --pg-dir it can reach")
        d.chmod(0o700)
        if (self.data / "PG_VERSION").exists():
            return
        self._run([self._bin("initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-locale",
                   "--auth-local=trust", "--auth-host=scram-sha-256"], timeout=300)
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(f"\n# so8t stack (deployments/stack.py)\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\nmax_connections = 100\nshared_buffers = 64MB\n")

    def running(self) -> bool:
        return self._run([self._bin("pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0

    def start(self) -> None:
        """Start the cluster (when not running) and create the ``prefect`` role and database (when missing)."""
        if not self.running():
            self._run([self._bin("pg_ctl"), "-D", str(self.data), "-l", str(Path(self.dir) / "postgres.log"),
                       "-w", "-t", "120", "start"], timeout=180)
        exists = self.sql("SELECT 1 FROM pg_roles WHERE rolname = 'prefect'")
        if exists != "1":
            self.sql(f"CREATE ROLE prefect LOGIN PASSWORD '{self.password}'")
        if self.sql("SELECT 1 FROM pg_database WHERE datname = 'prefect'") != "1":
            self.sql("CREATE DATABASE prefect OWNER prefect")

    def sql(self, query: str, database: str = "postgres") -> str:
        """Run ``query`` as the superuser over the cluster's Unix socket; its output, unaligned."""
        return self._run([self._bin("psql"), "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d", database,
                          "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", query]).stdout.strip()

    def stop(self) -> None:
        if self.data.exists() and self.running():
            self._run([self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"], timeout=120)


def _reachable_by(user: str, directory: Path) -> bool:
    pw = pwd.getpwnam(user)
    return subprocess.run(["test", "-x", str(directory)], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                          timeout=30).returncode == 0


def new_postgres(pg_dir: Path | None, port: int, bin_dir: Path, fallback_parent: Path | None = None) -> Postgres:
    """A cluster description for ``pg_dir`` (as root: run by the ``postgres`` OS user the package creates).

    ``pg_dir=None``: ``<fallback_parent>/postgres``, or a new directory under /tmp when we are root and the
    ``postgres`` user cannot reach ``fallback_parent`` (a private directory such as a test's tmp_path)."""
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(os.environ.get("SO8T_PG_OS_USER", "postgres")).pw_name
        except KeyError as e:
            raise StackError("PostgreSQL refuses to run as root and there is no 'postgres' OS user: "
                             "create one or set SO8T_PG_OS_USER to an unprivileged user") from e
    if pg_dir is None:
        parent = Path(fallback_parent or tempfile.gettempdir()).resolve()
        parent.mkdir(parents=True, exist_ok=True)
        if user is None or _reachable_by(user, parent):
            pg_dir = parent / "postgres"
        else:
            pg_dir = Path(tempfile.mkdtemp(prefix="so8t-postgres-", dir="/tmp"))
    return Postgres(dir=str(Path(pg_dir).resolve()), port=port, bin_dir=str(bin_dir),
                    password=secrets.token_urlsafe(24), os_user=user)


# ----------------------------------------------------------------------------- processes
@dataclass
class Proc:
    """A started process (its own session: ``pid`` is also its process group)."""

    name: str
    pid: int
    log: str
    cwd: str
    extra: dict[str, Any] = field(default_factory=dict)


def _spawn(name: str, cmd: list[str], env: dict[str, str], cwd: Path, logs: Path, log_name: str | None = None) -> Proc:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{log_name or name}.log"
    with log.open("ab") as out:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    return Proc(name=name, pid=p.pid, log=str(log), cwd=str(cwd))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to the process group of ``pid`` and to the groups of all its descendants.

    Prefect starts each flow run in a session of its own (so a worker's SIGTERM cannot beat the
    worker's own handling to it), so a machine that dies is the worker's group plus its flow runs'
    groups. Returns the process groups signalled."""
    groups = []
    for p in [pid, *descendants(pid)]:
        try:
            g = os.getpgid(p)
        except ProcessLookupError:
            continue
        if g not in groups:
            groups.append(g)
    for g in groups:
        try:
            os.killpg(g, sig)
        except ProcessLookupError:
            pass
    return groups


def stop_proc(pid: int, grace_s: float = 20) -> None:
    """SIGTERM the process's group (and its flow runs' groups), SIGKILL what is left after ``grace_s``."""
    if not alive(pid):
        return
    tree = [pid, *descendants(pid)]
    kill_tree(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.2)
    for p in tree:
        if alive(p):
            try:
                os.killpg(os.getpgid(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        os.waitpid(pid, os.WNOHANG)  # reap when it is our child
    except ChildProcessError:
        pass


# ----------------------------------------------------------------------------- the API
def api_call(api: str, path: str, body: Any = None, method: str | None = None, timeout: float = 30) -> Any:
    """JSON request to the Prefect API; returns the decoded body (None for 204)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api + path, data=data, headers={"content-type": "application/json"},
                                 method=method or ("POST" if body is not None else "GET"))
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def wait_healthy(api: str, proc: Proc, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if urllib.request.urlopen(api + "/health", timeout=5).status == 200:
                return
        except OSError:
            pass
        if not alive(proc.pid):
            raise StackError(f"prefect server exited; {proc.log}:\n{_tail(Path(proc.log))}")
        if time.monotonic() > deadline:
            raise StackError(f"prefect server did not answer {api}/health within {timeout_s:.0f} s; {proc.log}")
        time.sleep(1)


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus PYTHONPATH and PREFECT_* (each process gets its own Prefect settings)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PREFECT_")}
    env.update(extra or {})
    return env


def prefect_cli(args: list[str], api: str, cwd: Path = REPO, env: dict[str, str] | None = None,
                timeout: float = 300) -> str:
    """``python -m prefect ARGS`` against ``api``; :class:`StackError` with its output on failure."""
    e = {**os.environ, **(env or {}), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    r = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise StackError(f"prefect {' '.join(args[:3])} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def ensure_pools(api: str, pools: list[str] = list(POOLS.values())) -> list[str]:
    """Create the process work pools that do not exist yet; returns those created."""
    made = []
    for name in pools:
        try:
            api_call(api, f"/work_pools/{name}")
            continue
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        prefect_cli(["work-pool", "create", name, "--type", "process"], api)
        made.append(name)
    return made


def zombie_automation(after_s: float) -> dict[str, Any]:
    """The zombie-detection automation of ``deployments/zombie_flow_runs.yaml`` with its window set to ``after_s``."""
    spec = yaml.safe_load(ZOMBIE_FILE.read_text())
    if after_s <= HEARTBEAT_S:
        raise StackError(f"--zombie-after {after_s:g} must exceed the {HEARTBEAT_S} s heartbeat interval")
    spec["trigger"]["within"] = after_s
    return spec


def ensure_zombie_automation(api: str, after_s: float) -> str:
    """Create (or re-create with the given window) the zombie-detection automation; returns its id."""
    spec = zombie_automation(after_s)
    for a in api_call(api, "/automations/filter", {"automations": {"name": {"any_": [spec["name"]]}}}) or []:
        if a["name"] == spec["name"]:
            if float(a["trigger"].get("within", 0)) == float(after_s):
                return a["id"]
            api_call(api, f"/automations/{a['id']}", method="DELETE")
    return api_call(api, "/automations/", spec)["id"]


# ----------------------------------------------------------------------------- the stack
@dataclass
class Stack:
    """What ``up`` started (saved to ``<dir>/stack.json``)."""

    dir: str
    api_port: int
    postgres: Postgres
    server: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def logs(self) -> Path:
        return Path(self.dir) / "logs"

    def save(self) -> None:
        path = Path(self.dir) / STATE
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, d: Path) -> Stack:
        path = Path(d) / STATE
        if not path.exists():
            raise StackError(f"{path}: no stack here (run: python -m deployments.stack up --dir {d})")
        raw = json.loads(path.read_text())
        return cls(dir=raw["dir"], api_port=raw["api_port"], postgres=Postgres(**raw["postgres"]),
                   server=Proc(**raw["server"]) if raw.get("server") else None,
                   workers=[Proc(**w) for w in raw.get("workers", [])], source=raw.get("source", {}))

    # -- parts
    def start_database(self) -> None:
        self.postgres.init()
        self.postgres.start()

    def start_server(self, timeout_s: float = 300, env: dict[str, str] | None = None) -> Proc:
        """``prefect server start`` on 127.0.0.1 against the cluster (when not already running)."""
        if self.server and alive(self.server.pid):
            return self.server
        home = Path(self.dir) / "server"
        home.mkdir(parents=True, exist_ok=True)
        e = _clean_env({"PREFECT_HOME": str(home), "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.postgres.url,
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": self.api, **(env or {})})
        self.server = _spawn("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                        "--port", str(self.api_port)], e, home, self.logs)
        self.save()
        wait_healthy(self.api, self.server, timeout_s)
        return self.server

    def deploy(self, prefect_file: Path = REPO / "prefect.yaml", source: dict[str, str] | None = None) -> dict[str, str]:
        """``prefect deploy --all`` from the repository; the workers will clone ``source`` (default: :func:`git_source`)."""
        source = source or git_source(str(REPO))
        out = prefect_cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)], self.api,
                          env={"SO8T_GIT_REPOSITORY": source["repository"], "SO8T_GIT_COMMIT": source["commit"]},
                          timeout=600)
        self.source = source
        self.save()
        return {"output": out, **source}

    def worker_dir(self, name: str) -> Path:
        return Path(self.dir) / "workers" / name

    def worker_env(self, name: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """A worker's environment: the API, its own state directories, the Hub settings passed on."""
        d = self.worker_dir(name)
        own = {"registry": d / "registry", "work": d / "work", "prefect": d / "prefect-home", "hf": d / "hf-home",
               "tmp": d / "tmp"}
        for p in own.values():
            p.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k in PASS_ENV or k in ("PATH", "HOME", "LANG", "LC_ALL", "USER")}
        return {**base, "PREFECT_API_URL": self.api, "PREFECT_HOME": str(own["prefect"]),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
                "PREFECT_LOGGING_EXTRA_LOGGERS": "so8t,registry",
                "SO8T_REGISTRY": str(own["registry"]), "SO8T_WORK_DIR": str(own["work"]),
                "HF_HOME": str(own["hf"]), "TMPDIR": str(own["tmp"]), **(env or {})}

    def start_worker(self, name: str, pool: str, limit: int = 1, env: dict[str, str] | None = None,
                     query_s: float = 5) -> Proc:
        """``prefect worker start --pool POOL`` in the empty directory ``<dir>/workers/<name>``."""
        for w in self.workers:
            if w.name == name and alive(w.pid):
                return w
        d = self.worker_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        e = self.worker_env(name, {"PREFECT_WORKER_QUERY_SECONDS": str(query_s), **(env or {})})
        w = _spawn(name, [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                                      "process", "--name", name, "--limit", str(limit)], e, d, self.logs,
                   log_name=f"worker-{name}")
        w.extra = {"pool": pool, "registry": e["SO8T_REGISTRY"], "work_dir": e["SO8T_WORK_DIR"]}
        self.workers = [x for x in self.workers if x.name != name] + [w]
        self.save()
        return w

    def stop(self, purge: bool = False) -> None:
        """Stop the workers (and their flow runs), the server and PostgreSQL; ``purge``: delete everything."""
        for w in self.workers:
            stop_proc(w.pid)
        if self.server:
            stop_proc(self.server.pid)
        self.postgres.stop()
        if purge:
            shutil.rmtree(self.postgres.dir, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)


def create_stack(d: Path, api_port: int | None = None, pg_port: int | None = None, pg_dir: Path | None = None,
                 install: bool = True) -> Stack:
    """The stack of ``d`` (loaded when ``up`` ran there before, else new: ports free, cluster in ``pg_dir``)."""
    d = Path(d).expanduser().resolve()
    if (d / STATE).exists():
        return Stack.load(d)
    bin_dir = ensure_postgres_installed(install)
    d.mkdir(parents=True, exist_ok=True)
    pg = new_postgres(pg_dir, pg_port or free_port(), bin_dir, fallback_parent=d)
    stack = Stack(dir=str(d), api_port=api_port or free_port(), postgres=pg)
    stack.save()
    return stack


def up(args: argparse.Namespace) -> Stack:
    stack = create_stack(args.dir, args.api_port, args.pg_port, args.pg_dir, install=not args.no_install)
    print(f"PostgreSQL {stack.postgres.bin_dir} on 127.0.0.1:{stack.postgres.port} (cluster {stack.postgres.dir})")
    stack.start_database()
    print(f"prefect server start on {stack.api} (log {stack.logs / 'server.log'}) ...", flush=True)
    stack.start_server()
    made = ensure_pools(stack.api)
    print(f"work pools: {', '.join(POOLS.values())} ({'created ' + ', '.join(made) if made else 'existing'})")
    aid = ensure_zombie_automation(stack.api, args.zombie_after)
    print(f"zombie detection: flow runs without a heartbeat for {args.zombie_after:g} s are marked Crashed ({aid})")
    if not args.no_deploy:
        source = None
        if args.snapshot:
            commit = snapshot_worktree(Path(stack.dir) / "snapshot.git")
            source = {"repository": (Path(stack.dir) / "snapshot.git").as_uri(), "commit": commit}
        dep = stack.deploy(source=source)
        print(f"deployed prefect.yaml: workers clone {dep['repository']} at {dep['commit'][:12]}")
    for kind in args.workers:
        w = stack.start_worker(kind, POOLS[kind], limit=args.limit)
        print(f"worker {kind}: pool {POOLS[kind]}, directory {w.cwd}, registry {w.extra['registry']}")
    print(f"\nexport PREFECT_API_URL={stack.api}      # UI: {stack.api[:-4]}")
    return stack


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m deployments.stack`` command line (up, status, down)."""
    ap = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start (or restart) PostgreSQL, the server, pools, deployments and workers")
    s = sub.add_parser("status", help="what runs, where, and the API URL")
    dn = sub.add_parser("down", help="stop the workers, the server and PostgreSQL")
    for p in (u, s, dn):
        p.add_argument("--dir", type=Path, required=True, help="directory of the stack: state, logs, workers")
    u.add_argument("--api-port", type=int, help="Prefect API/UI port on 127.0.0.1 (default: a free port; kept in stack.json)")
    u.add_argument("--pg-port", type=int, help="PostgreSQL port on 127.0.0.1 (default: a free port; kept in stack.json)")
    u.add_argument("--pg-dir", type=Path, help="PostgreSQL cluster directory (default: DIR/postgres; as root, when the "
                                               "postgres OS user cannot reach DIR, a new /tmp/so8t-postgres-* directory)")
    u.add_argument("--workers", type=lambda v: [w for w in v.split(",") if w], default=["gpu", "cpu"],
                   help="workers to start, comma-separated, from: gpu (pool so8t-gpu), cpu (pool so8t-cpu); '' for none")
    u.add_argument("--limit", type=int, default=1, help="flow runs each worker runs at once (default 1)")
    u.add_argument("--zombie-after", type=float, default=90.0,
                   help=f"seconds without a flow-run heartbeat before the run is marked Crashed (> {HEARTBEAT_S}; default 90)")
    u.add_argument("--snapshot", action="store_true", help="deploy the working tree as it is (committed into "
                                                          "DIR/snapshot.git) instead of the HEAD commit")
    u.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    u.add_argument("--no-install", action="store_true", help="never apt-get install PostgreSQL")
    dn.add_argument("--purge", action="store_true", help="also delete the database cluster and DIR")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            if any(w not in POOLS for w in args.workers):
                ap.error(f"--workers: choose from {', '.join(POOLS)}")
            up(args)
        elif args.cmd == "status":
            st = Stack.load(args.dir)
            print(f"api {st.api}  postgres 127.0.0.1:{st.postgres.port} {'up' if st.postgres.running() else 'down'}")
            for p in ([st.server] if st.server else []) + st.workers:
                print(f"{p.name:<12} pid {p.pid:<8} {'running' if alive(p.pid) else 'stopped'}  {p.cwd}")
        else:
            Stack.load(args.dir).stop(purge=args.purge)
            print("stopped" + (" and purged" if args.purge else ""))
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
