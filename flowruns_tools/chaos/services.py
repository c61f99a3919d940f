"""The scenario's own services: a database on the configured server (or a PostgreSQL cluster made
with initdb), a Redis database (or a redis-server of its own), and `celery -A tasks worker` processes,
each started, killed and stopped by pid (never by name)."""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

REPOSITORY = Path(__file__).resolve().parent.parent.parent
WORKER_PROCESSES = 2
WORKER_START_SECONDS = 60.0
DEFAULT_REDIS_DB = 13
DEFAULT_PG_PORT = 55432
DEFAULT_REDIS_PORT = 56379
RESULT_PREFIX = "celery-task-meta-"


IDLE_WAITS = frozenset({"anon_pipe_read", "pipe_read"})
"""Where an idle pool process sleeps (its kernel wait channel): reading its next task from a pipe."""


class ChaosSetupError(RuntimeError):
    """A scenario could not be set up (a missing binary, a busy Redis database): no verdict."""


def say(message: str) -> None:
    """Progress, on standard error (the table or JSON goes to standard output)."""
    print(message, file=sys.stderr, flush=True)


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens on it on 127.0.0.1, else a free port the kernel picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise ChaosSetupError("no free port on 127.0.0.1")  # pragma: no cover


def postgres_url(url: str) -> sa.URL:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ChaosSetupError(f"chaos scenarios need PostgreSQL; FLOWRUNS_DATABASE_URL is {parsed.get_backend_name()}")
    return parsed


@contextlib.contextmanager
def database_on(server_url: str, prefix: str = "flowruns_chaos") -> Iterator[str]:
    """A migrated database of its own on the server of `server_url`, dropped afterwards."""
    from models import database, migrations

    url = postgres_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    scratch = url.set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(scratch)
        database.get_engine(scratch).dispose()
        yield scratch
    finally:
        database.get_engine(scratch).dispose()
        for attempt in range(10):  # the server may still be coming back from a restart
            try:
                with admin.connect() as connection:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except sa.exc.OperationalError:
                if attempt == 9:
                    raise
                time.sleep(1)
        admin.dispose()


def redis_url_with_db(url: str, db: int) -> str:
    """`url` (any database) pointed at database `db`."""
    base = re.sub(r"/\d*$", "", url.rstrip("/")) if re.search(r"//[^/]*/\d*$", url) else url.rstrip("/")
    return f"{base}/{db}"


@contextlib.contextmanager
def redis_database(url: str, exclusive: bool) -> Iterator[str]:
    """Redis database `url` for one scenario.

    `exclusive`: it must be empty (a user's data is never touched) and is emptied afterwards;
    otherwise it is a test database shared with other runs, and the scenario deletes only its keys.
    """
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except redis.exceptions.RedisError as error:
        raise ChaosSetupError(f"no Redis at {safe_url(url)}: {error}") from None
    if exclusive and (keys := client.dbsize()):
        raise ChaosSetupError(
            f"Redis database {safe_url(url)} holds {keys} keys; scenarios use an empty database of their own "
            "(choose another with --redis-db)"
        )
    try:
        yield url
    finally:
        if exclusive:
            client.flushdb()
        client.close()


def safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def forget_queue(url: str, queue: str) -> None:
    """Delete a queue, its bindings and the results of its tasks from a shared database."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
    try:
        for name in (queue, f"{queue}.maintenance"):
            client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
        for key in client.scan_iter(match=f"{RESULT_PREFIX}*", count=1000):
            raw = client.get(key)
            if raw is not None and json.loads(raw).get("queue") == queue:
                client.delete(key)
        for tag, raw in client.hgetall("unacked").items():
            if _unacked_queue(raw) == queue:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


def _unacked_queue(raw: bytes) -> str | None:
    try:
        _message, exchange, routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return str(routing_key or exchange)


def _as_postgres_user() -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as `postgres` then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def find_pg_bindir(explicit: str | None = None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        if (pg_config := shutil.which("pg_config")) is not None:
            output = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout
            candidates.append(Path(output.strip()))
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise ChaosSetupError("initdb/pg_ctl not found (pass --pg-bin)")


class PostgresCluster:
    """A PostgreSQL cluster of the scenario's own: initdb in a temp dir, started and stopped with pg_ctl."""

    def __init__(self, bindir: Path, port: int, listen: tuple[str, ...] = ("127.0.0.1",),
                 trusted: tuple[str, ...] = ()) -> None:
        """`listen`: the addresses it listens on; `trusted`: networks (CIDR) besides 127.0.0.1 it admits."""
        self.bindir = bindir
        self.port = port
        self.listen = listen
        self.directory = Path(tempfile.mkdtemp(prefix="flowruns-chaos-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        if os.geteuid() == 0:
            import pwd

            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._pg(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale",
                  "-E", "UTF8", "--no-sync"])
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trusted)

    def _pg(self, command: list[str], timeout: float = 120) -> None:
        binary = str(self.bindir / command[0])
        completed = subprocess.run(
            [*_as_postgres_user(), binary, *command[1:]], capture_output=True, text=True, timeout=timeout,
            check=False, cwd=self.directory,
        )
        if completed.returncode != 0:
            raise ChaosSetupError(f"{command[0]} failed: {completed.stderr.strip() or completed.stdout.strip()}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses={','.join(self.listen)} "
                   "-c max_connections=100")
        self._pg(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"])

    def stop(self, mode: str = "fast") -> None:
        self._pg(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        with contextlib.suppress(ChaosSetupError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisServer:
    """A redis-server of the scenario's own, persisting every write (append-only file, fsync always)."""

    def __init__(self, port: int, password: str | None = None, bind: tuple[str, ...] = ("127.0.0.1",)) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ChaosSetupError("redis-server not found on PATH")
        self.binary = binary
        self.port = port
        self.password = password
        self.bind = bind
        self.directory = Path(tempfile.mkdtemp(prefix="flowruns-chaos-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=1,
                           socket_timeout=10)

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", *self.bind, "--dir", str(self.directory),
                   "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                   "--logfile", str(self.directory / "redis.log")]
        if self.password:
            command += ["--requirepass", self.password]
        if set(self.bind) != {"127.0.0.1"}:
            command += ["--protected-mode", "no"]  # it admits its other addresses: the scenario's own bridge
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.exceptions.RedisError):
                client = self.client()
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            if self.process.poll() is not None:
                raise ChaosSetupError(f"redis-server exited: {(self.directory / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise ChaosSetupError("redis-server did not start")

    def stop(self, how: str = "shutdown") -> None:
        """SHUTDOWN (persisting) or SIGTERM (the same, from outside); waits for the process to end."""
        if self.process is None or self.process.poll() is not None:
            return
        if how == "shutdown":
            client = self.client()
            with contextlib.suppress(redis.exceptions.ConnectionError):
                client.shutdown()
            client.close()
        else:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop("sigterm")
        shutil.rmtree(self.directory, ignore_errors=True)


def worker_env(database_url: str, broker_url: str, result_backend: str, queue: str, **settings: Any) -> dict[str, str]:
    """The worker's environment: the process's own, with every FLOWRUNS_* value the scenario decides."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLOWRUNS_")}
    env.update({
        "FLOWRUNS_DATABASE_URL": database_url,
        "FLOWRUNS_BROKER_URL": broker_url,
        "FLOWRUNS_RESULT_BACKEND": result_backend,
        "FLOWRUNS_TASK_QUEUE": queue,
        **{f"FLOWRUNS_{name.upper()}": str(value) for name, value in settings.items()},
    })
    return env


class WorkerProcess:
    """`celery -A tasks worker` (prefork; or another app module that extends it) as a subprocess;
    killed and restarted by pid, never by name."""

    def __init__(self, env: dict[str, str], log_dir: Path, label: str, concurrency: int = WORKER_PROCESSES,
                 loglevel: str = "INFO", code: Path | None = None, app: str = "tasks",
                 prefix: Sequence[str] = ()) -> None:
        """`prefix`: what the command runs under (`ip netns exec <host>`), which must exec it in place."""
        self.code = code or REPOSITORY
        self.prefix = list(prefix)
        self.app = app
        self.env = {**env, "PYTHONPATH": str(self.code)} if code is not None else env
        self.log_dir = log_dir
        self.label = label
        self.concurrency = concurrency
        self.loglevel = loglevel
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.killed = False
        """Set while this harness has killed the worker on purpose (until it starts it again)."""
        self.lock = threading.RLock()
        """Faults run in a thread of their own; a start, kill or supervision happens whole."""

    def start(self) -> None:
        with self.lock:
            self._start()

    def _start(self) -> None:
        self.killed = False
        self.generation += 1
        hostname = f"{self.label}-{self.generation}@{socket.gethostname()}"
        log = self.log_dir / f"worker-{self.label}-{self.generation}.log"
        self.logs.append(log)
        command = [*self.prefix, sys.executable, "-m", "celery", "-A", self.app, "worker", "--pool", "prefork",
                   "--concurrency", str(self.concurrency), "--loglevel", self.loglevel, "--hostname", hostname,
                   "--without-mingle", "--without-gossip"]
        with log.open("wb") as output:
            self.process = subprocess.Popen(command, cwd=self.code, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """The pool processes (children of the main process)."""
        found: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in (task / "children").read_text().split()]
        return sorted(set(found))

    def _identities(self, pids: list[int]) -> dict[int, str]:
        return {pid: identity for pid in pids if (identity := _process_identity(pid)) is not None}

    def wait_for_children(self, timeout: float = 30.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(children := self.children()) >= self.concurrency:
                return children
            if not self.alive():
                raise ChaosSetupError(f"the worker exited:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise ChaosSetupError(f"the worker's pool did not start:\n{self.log_text()[-3000:]}")

    def await_busy(self, timeout: float = 5.0) -> int | None:
        """Wait (briefly) until a pool process is inside a task, so a fault that follows strikes a worker
        holding a message; that process, or None if none got one in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in self.children():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/wchan").read_text().strip() not in IDLE_WAITS:
                        return pid
            time.sleep(0.0005)
        return None

    def kill_child(self, rng: random.Random) -> str:
        """SIGKILL one pool process: its task is rejected and requeued at once (reject_on_worker_lost)."""
        with self.lock:
            children = self.wait_for_children()
            victim = self.await_busy() or rng.choice(children)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        return f"SIGKILL pool process {victim}"

    def kill_all(self) -> str:
        """SIGKILL the main process, then its pool: the node is gone; its messages wait for the visibility timeout."""
        with self.lock:
            children = self._identities(self.children())
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _kill_same(children)
            assert self.process is not None
            self.process.wait(timeout=30)
        return f"SIGKILL main process {self.pid} and pool {sorted(children)}"

    def stop(self) -> None:
        """Warm shutdown by pid; SIGKILL (main and pool) if it does not end in time."""
        self.killed = True
        if not self.alive():
            return
        assert self.process is not None
        children = self._identities(self.children())
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        _kill_same(children)

    def log_text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def supervise(self) -> str | None:
        """Restart the worker if it exited on its own, as a supervisor would (compose: `restart:
        unless-stopped`); what happened, or None. A worker this harness killed is restarted by the fault."""
        with self.lock:
            if self.process is None or self.process.poll() is None or self.killed:
                return None
            code = self.process.returncode
            reason = next((line.strip() for line in reversed(self.logs[-1].read_text(errors="replace").splitlines())
                           if "CRITICAL" in line or "Unrecoverable" in line), "no reason logged")
            self._start()
        return f"worker exited on its own (code {code}: {reason[:300]}); restarted by the supervisor"


class WorkerGroup:
    """Workers on several hosts, driven as one: started, stopped, supervised and logged together."""

    def __init__(self, workers: Sequence[WorkerProcess]) -> None:
        self.workers = list(workers)

    def start(self) -> None:
        for worker in self.workers:
            if not worker.alive():
                worker.start()

    def wait_for_children(self, timeout: float = 30.0) -> list[int]:
        return [pid for worker in self.workers for pid in worker.wait_for_children(timeout)]

    def alive(self) -> bool:
        return all(worker.alive() for worker in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def log_text(self) -> str:
        return "\n".join(worker.log_text() for worker in self.workers)

    def supervise(self) -> str | None:
        events = [event for worker in self.workers if (event := worker.supervise()) is not None]
        return "; ".join(events) or None


def _process_identity(pid: int) -> str | None:
    """The pid with its start time: a pid the kernel reused for another process has another identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def _kill_same(processes: dict[int, str]) -> None:
    """SIGKILL each process that is still the one recorded (same pid, same start time)."""
    for pid, identity in processes.items():
        if _process_identity(pid) == identity:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
