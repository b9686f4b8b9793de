"""The local stack: PostgreSQL from pip, a GCS emulator, the function, the bridge.

One implementation serves ``metrics-ingest dev``, ``metrics-ingest demo``
and the tests:

* PostgreSQL: ``pgserver`` (PostgreSQL 16 from pip, Unix socket) with its data
  in ``STATE_DIR/pgdata``, or an existing server given by ``database_url``;
  the migrations and the dev-only platform table are applied (idempotent).
* ``GcsEmulator`` with one bucket (objects in memory, or in ``STATE_DIR/gcs``).
* the function under ``functions-framework`` (a subprocess in its own process
  group, so stopping it stops gunicorn's workers too);
* ``EventBridge``: every upload becomes the finalize CloudEvent Eventarc sends.

Example::

    with LocalStack(".metrics-ingest") as stack:
        os.environ.update(stack.env())          # STORAGE_EMULATOR_HOST, DATABASE_URL
        quicktest_id, folder = stack.add_quicktest()
        storage.Client().bucket(stack.bucket).blob(f"{folder_path}/training_metrics.json").upload_from_string(doc)
        history = stack.wait_for_history(quicktest_id, timeout=10)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import psycopg2
import psycopg2.extras
import requests
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from ingest.config import QUICKTEST_TABLE, Settings
from metrics_ingest.localstack.bridge import EventBridge
from metrics_ingest.localstack.emulator import GcsEmulator

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTION_SOURCE = REPO_ROOT / "functions" / "main.py"
DEFAULT_STATE_DIR = ".metrics-ingest"
DEFAULT_BUCKET = "ml-artifacts"
DATABASE_NAME = "metrics_ingest"
FUNCTION_TARGET = "ingest_training_metrics"


class StackError(RuntimeError):
    """A part of the local stack could not start (the message says which and why)."""


class Steps:
    """Prints ``starting X... ok (1.2 s)`` for each step of a long command.

    Example::

        steps = Steps(sys.stdout)
        with steps("starting PostgreSQL"):
            ...
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    @contextlib.contextmanager
    def __call__(self, text: str) -> Iterator[None]:
        if self.stream is None:
            yield
            return
        print(f"{text}...", end="", file=self.stream, flush=True)
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            print(" failed", file=self.stream, flush=True)
            raise
        print(f" ok ({time.perf_counter() - started:.1f} s)", file=self.stream, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (for the subprocess, which needs a number)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _check_port_free(host: str, port: int, option: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except socket.gaierror as exc:
            raise StackError(f"--host {host!r} is not a known address ({exc.strerror})") from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise StackError(f"--host {host} is not an address of this machine ({exc.strerror})") from None
            raise StackError(f"{host}:{port} is not free ({exc.strerror}); choose another with {option} (0: any)") from None


def with_database(url: str, dbname: str) -> str:
    """The same server URL, another database (keeps host/socket parameters)."""
    params = parse_dsn(url)
    params["dbname"] = dbname
    return make_dsn(**params)


def ensure_database(admin_url: str, dbname: str) -> str:
    """Create ``dbname`` on the server if absent; returns its URL."""
    conn = psycopg2.connect(admin_url)
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    finally:
        conn.close()
    return with_database(admin_url, dbname)


def prepare_database(database_url: str) -> list[str]:
    """Create the dev-only platform table, then apply the production migrations
    (in this order: a migration's post-apply hook indexes the platform table)."""
    from metrics_ingest.migrations import apply_migrations, create_dev_platform_table

    create_dev_platform_table(database_url, Settings.quicktest_table_from_env())
    return apply_migrations(database_url)


# ------------------------------------------------------- QuickTest helpers


def create_quicktest(
    database_url: str,
    bucket: str,
    folder: str | None = None,
    *,
    name: str = "local quick test",
    table: str = QUICKTEST_TABLE,
) -> tuple[int, str]:
    """Insert a QuickTest row; returns (id, its ``gs://`` folder).

    ``folder`` None gives ``gs://BUCKET/quick_tests/<id>``, the platform's layout.
    """
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("INSERT INTO {} (name, status, gcs_artifacts_path) VALUES (%s, 'running', %s) RETURNING id").format(
                    sql.Identifier(table)
                ),
                (name, folder or ""),
            )
            (quicktest_id,) = cur.fetchone()
            if folder is None:
                folder = f"gs://{bucket}/quick_tests/{quicktest_id}"
                cur.execute(
                    sql.SQL("UPDATE {} SET gcs_artifacts_path = %s WHERE id = %s").format(sql.Identifier(table)),
                    (folder, quicktest_id),
                )
    finally:
        conn.close()
    return quicktest_id, folder


def fetch_history(database_url: str, quicktest_id: int, table: str = QUICKTEST_TABLE) -> dict[str, Any] | None:
    """The row's ``training_history_json`` (None while empty)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT training_history_json FROM {} WHERE id = %s").format(sql.Identifier(table)),
                (quicktest_id,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        raise LookupError(f"no QuickTest row {quicktest_id} in {table}")
    return row[0]


def fetch_ingestions(database_url: str, bucket: str, name: str) -> list[dict[str, Any]]:
    """Every ingestion record of one object, oldest first."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                "SELECT * FROM training_metrics_ingestions WHERE bucket = %s AND object_name = %s ORDER BY id",
                (bucket, name),
            )
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


def wait_for_history(
    database_url: str, quicktest_id: int, timeout: float, *, table: str = QUICKTEST_TABLE, poll: float = 0.05
) -> dict[str, Any] | None:
    """Poll the row until its history is filled or ``timeout`` seconds pass (then None)."""
    deadline = time.monotonic() + timeout
    while True:
        history = fetch_history(database_url, quicktest_id, table)
        if history is not None or time.monotonic() >= deadline:
            return history
        time.sleep(poll)


# ------------------------------------------------------------ the stack


class LocalStack:
    """PostgreSQL + GCS emulator + the function + the Eventarc bridge, locally.

    Args:
        state_dir: the folder for everything the stack keeps (PostgreSQL data,
            logs, ``env.sh``); default ``.metrics-ingest`` in the cwd.
        bucket: the bucket to create in the emulator (default ``ml-artifacts``).
        database_url: use this existing database instead of starting pgserver
            (migrations and the dev table are applied to it).
        host: address the emulator and the function bind (default loopback).
        emulator_port: the emulator's port; 0 (default) picks a free one.
        function_port: the function's port; 0 (default) picks a free one.
        persist_objects: keep emulator objects in ``STATE_DIR/gcs`` (default
            False: in memory, gone when the stack stops).
        function_log: a file for the function's output; None (default) is
            ``STATE_DIR/function.log``; ``"-"`` shares this process's output.
        steps: reports progress (default silent).
        extra_env: more environment for the function (e.g. QUICKTEST_TABLE).

    Example::

        with LocalStack(tmp_path, function_port=8080) as stack:
            print(stack.database_url, stack.emulator_url, stack.function_url, stack.bucket)
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
        *,
        bucket: str = DEFAULT_BUCKET,
        database_url: str | None = None,
        host: str = "127.0.0.1",
        emulator_port: int = 0,
        function_port: int = 0,
        persist_objects: bool = False,
        function_log: str | os.PathLike[str] | None = None,
        steps: Callable[[str], contextlib.AbstractContextManager[None]] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        for name, port in (("emulator_port", emulator_port), ("function_port", function_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"Invalid value for argument `{name}`. Received: {name}={port}. Expected 0..65535.")
        self.state_dir = Path(state_dir).resolve()
        self.bucket = bucket
        self.host = host
        self.persist_objects = persist_objects
        self.extra_env = dict(extra_env or {})
        self._given_database_url = database_url
        self._emulator_port = emulator_port
        self._function_port = function_port
        self._function_log = function_log
        self._steps = steps or Steps(None)
        self.database_url: str = ""
        self.function_url: str = ""
        self.pg_server: Any = None
        self.emulator: GcsEmulator | None = None
        self.bridge: EventBridge | None = None
        self.function: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._wrote_stack_file = False

    # -- lifecycle

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        running = running_stack(self.state_dir)
        if running is not None:
            # Two stacks on one folder would share pgdata and overwrite each other's env.sh.
            raise StackError(
                f"a stack is already running in {self.state_dir} (pid {running['pid']}, function "
                f"{running.get('function_url')}); stop it with Ctrl-C in its terminal, or use another --state-dir"
            )
        # Ports first: a taken port is the likeliest mistake and costs nothing to find.
        _check_port_free(self.host, self._function_port, "--function-port")  # port 0: checks --host
        port = self._function_port or free_port(self.host)
        if self._emulator_port:
            _check_port_free(self.host, self._emulator_port, "--emulator-port")
        if self._given_database_url is None:
            with self._steps(f"starting PostgreSQL (pgserver, data in {self.state_dir / 'pgdata'})"):
                with warnings.catch_warnings():
                    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
                    warnings.simplefilter("ignore")
                    import pgserver

                    self.pg_server = pgserver.get_server(self.state_dir / "pgdata", cleanup_mode="stop")
                self.database_url = ensure_database(self.pg_server.get_uri(), DATABASE_NAME)
        else:
            self.database_url = self._given_database_url
        with self._steps("applying migrations and the dev platform table"):
            try:
                prepare_database(self.database_url)
            except psycopg2.Error as exc:  # a wrong --database-url is a message, not a traceback
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StackError(f"cannot prepare the database: {first}") from None

        self.function_url = f"http://{self.host}:{port}/"
        self.bridge = EventBridge(self.function_url)
        with self._steps("starting the GCS emulator"):
            data_dir = self.state_dir / "gcs" if self.persist_objects else None
            if data_dir is not None:
                data_dir.mkdir(exist_ok=True)
            self.emulator = GcsEmulator(
                self.host, self._emulator_port, None if data_dir is None else str(data_dir), on_finalize=self.bridge.submit
            ).start()
            self.emulator.create_bucket(self.bucket)
        with self._steps(f"starting the function ({FUNCTION_TARGET} under functions-framework)"):
            self._start_function(port)
        self.bridge.start()
        self._write_env_files()

    def _start_function(self, port: int) -> None:
        command = [
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            FUNCTION_TARGET,
            "--source",
            str(FUNCTION_SOURCE),
            "--signature-type",
            "cloudevent",
            "--host",
            self.host,
            "--port",
            str(port),
        ]
        env = {**os.environ, **self.env(), **self.extra_env, "PYTHONUNBUFFERED": "1"}
        if self._function_log == "-":
            output: Any = None
        else:
            log_path = Path(self._function_log) if self._function_log else self.state_dir / "function.log"
            self._log_file = output = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # A session of its own: the terminal's Ctrl-C reaches us, not it, and
        # stop() ends the whole group (gunicorn's arbiter and its worker).
        self.function = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT
        )
        deadline = time.monotonic() + 90
        while True:
            if self.function.poll() is not None:
                raise StackError(f"the function exited with status {self.function.returncode}; see {self.function_log}")
            try:
                requests.get(self.function_url, timeout=1)
                return  # any HTTP answer: it is serving
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise StackError(f"the function did not start listening on {self.function_url}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop everything this stack started (idempotent)."""
        if self.function is not None:
            _stop_process_group(self.function)
            self.function = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        if self.pg_server is not None:
            self.pg_server.cleanup()
            self.pg_server = None
        if self._wrote_stack_file:
            # Ours only: a stack refused for a busy folder must not hide the running one.
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / "stack.json").unlink()  # nothing to find any more
            self._wrote_stack_file = False

    # -- what to export

    @property
    def emulator_url(self) -> str:
        if self.emulator is None:
            raise StackError("the stack is not started")
        return self.emulator.url

    @property
    def function_log(self) -> str:
        if self._function_log == "-":
            return "this terminal"
        return str(Path(self._function_log) if self._function_log else self.state_dir / "function.log")

    def env(self) -> dict[str, str]:
        """The environment a client of this stack needs."""
        return {
            "STORAGE_EMULATOR_HOST": self.emulator_url,
            "DATABASE_URL": self.database_url,
            "GOOGLE_CLOUD_PROJECT": os.environ.get("GOOGLE_CLOUD_PROJECT", "local-dev"),
            "METRICS_BUCKET": self.bucket,
        }

    def _write_env_files(self) -> None:
        env = self.env()
        lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
        (self.state_dir / "env.sh").write_text("\n".join(lines) + "\n")
        (self.state_dir / "stack.json").write_text(
            json.dumps({**env, "function_url": self.function_url, "pid": os.getpid()}, indent=2) + "\n"
        )
        self._wrote_stack_file = True

    # -- conveniences over the stack's database

    def add_quicktest(self, folder: str | None = None, *, name: str = "local quick test") -> tuple[int, str]:
        """Create a QuickTest row (folder default ``gs://BUCKET/quick_tests/<id>``)."""
        return create_quicktest(self.database_url, self.bucket, folder, name=name, table=self._table)

    def wait_for_history(self, quicktest_id: int, timeout: float) -> dict[str, Any] | None:
        return wait_for_history(self.database_url, quicktest_id, timeout, table=self._table)

    @property
    def _table(self) -> str:
        return Settings.quicktest_table_from_env({**os.environ, **self.extra_env})


def _stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it after ``grace`` seconds."""
    # Even when the leader has exited, members of its group may remain.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def read_stack_file(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> dict[str, Any] | None:
    """What a running ``metrics-ingest dev`` wrote to ``STATE_DIR/stack.json`` (None if absent)."""
    path = Path(state_dir) / "stack.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # cut short by a crash: as good as absent
        return None


def running_stack(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> dict[str, Any] | None:
    """``stack.json`` of a stack whose process is still alive (None if none: a
    file left by a killed stack does not count)."""
    stack = read_stack_file(state_dir)
    if stack is None or not isinstance(stack.get("pid"), int):
        return None
    try:
        os.kill(stack["pid"], 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return stack
    return stack
