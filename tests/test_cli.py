"""The command line's answers to common mistakes: one clear line, the right exit status, no traceback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from metrics_ingest.cli import main
from metrics_ingest.localstack.emulator import GcsEmulator
from metrics_ingest.localstack.stack import LocalStack, StackError
from tests.support.localstack import REPO_ROOT, cli_command, cli_env, fill_bucket


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# ---------------------------------------------------------------- replay


@pytest.mark.parametrize("value", ["0", "-3", "four"])
def test_replay_rejects_workers_below_one(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 0, negative or not a number is a usage error (status 2) naming the option."""
    with pytest.raises(SystemExit) as exc:
        main(["replay", "gs://ml-artifacts", "--workers", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --workers" in err and value in err


def test_replay_refuses_a_wildcard_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """A shell-style pattern would list nothing: it is a usage error that says prefixes are plain."""
    assert main(["replay", "gs://ml-artifacts/quick_tests/*"]) == 2
    err = capsys.readouterr().err
    assert "not a pattern" in err and "gs://ml-artifacts/quick_tests/" in err


def test_replay_without_credentials_says_how_to_provide_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No emulator and no credentials: status 2 within seconds (no metadata-server hang), and the
    message names the three ways to provide credentials."""
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no application_default_credentials.json
    closed = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("GCE_METADATA_HOST", closed)  # a metadata server that refuses, as off GCP
    monkeypatch.setenv("GCE_METADATA_IP", closed)
    started = time.monotonic()
    assert main(["replay", "gs://ml-artifacts/quick_tests"]) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert "no Google Cloud credentials" in err
    for way in ("gcloud auth application-default login", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST=http"):
        assert way in err
    _no_traceback(err)


def test_replay_wants_a_url_in_storage_emulator_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """STORAGE_EMULATOR_HOST without http:// is a usage error that shows the fixed value."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")
    assert main(["replay", "gs://ml-artifacts"]) == 2
    assert "http://127.0.0.1:9023" in capsys.readouterr().err


def test_replay_with_gcs_unreachable_gives_up_within_the_timeout(
    platform_db: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An emulator that is not running: status 1 after about GCS_TIMEOUT_SECONDS (not the client's
    default two minutes), saying where it tried."""
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-test")
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    monkeypatch.setenv("GCS_TIMEOUT_SECONDS", "2")
    started = time.monotonic()
    assert main(["replay", "gs://ml-artifacts"]) == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert f"cannot reach GCS at {url}" in err and "GCS_TIMEOUT_SECONDS" in err


def test_replay_database_mistakes_are_one_message_each(
    gcs_env: GcsEmulator,
    platform_db: Any,
    scratch_database: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DATABASE_URL unset (2), malformed (2), unreachable (1), not migrated (2) or the wrong
    QUICKTEST_TABLE (2): checked once before listing, one line naming the fix, no per-file failures."""
    bucket = fill_bucket(gcs_env, platform_db.url, valid=1)

    monkeypatch.setenv("PGHOST", "/nonexistent")  # libpq's defaults lead nowhere
    assert main(["replay", bucket.uri]) == 2
    err = capsys.readouterr().err
    assert "DATABASE_URL is not set" in err and "--database-url" in err

    assert main(["replay", bucket.uri, "--database-url", "not a dsn"]) == 2
    assert "not a valid connection string" in capsys.readouterr().err

    unreachable = f"postgresql://nobody@127.0.0.1:{_closed_port()}/x?connect_timeout=2"
    assert main(["replay", bucket.uri, "--database-url", unreachable]) == 1
    assert "cannot connect to the database" in capsys.readouterr().err

    assert main(["replay", bucket.uri, "--database-url", scratch_database("unmigrated")]) == 2
    assert "run `metrics-ingest migrate` first" in capsys.readouterr().err

    monkeypatch.setenv("QUICKTEST_TABLE", "no_such_table")
    assert main(["replay", bucket.uri, "--database-url", platform_db.url]) == 2
    assert "no table 'no_such_table'" in capsys.readouterr().err
    assert platform_db.history(bucket.valid[next(iter(bucket.valid))]) is None


def test_replay_missing_bucket_and_empty_prefix(replay_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A bucket that does not exist is status 2 naming it; a prefix with no metrics files exits 0
    with a note saying so."""
    assert main(["replay", "gs://no-such-bucket-anywhere/x"]) == 2
    assert "no such bucket: gs://no-such-bucket-anywhere" in capsys.readouterr().err
    replay_env.create_bucket("cli-empty-bucket")
    assert main(["replay", "gs://cli-empty-bucket/quick_tests"]) == 0
    err = capsys.readouterr().err
    assert "no training_metrics.json under gs://cli-empty-bucket/quick_tests" in err


def test_replay_json_is_the_only_thing_on_stdout(replay_env: Any, platform_db: Any) -> None:
    """`replay --json`: stdout parses as one JSON document (summary, counts, one entry per object),
    the progress lines go to stderr, and the exit status matches the document's."""
    bucket = fill_bucket(replay_env, platform_db.url, valid=2, broken=1)
    proc = subprocess.run(
        cli_command("replay", bucket.uri, "--json", "--workers", "2"),
        cwd=REPO_ROOT,
        env=cli_env(DATABASE_URL=platform_db.url, STORAGE_EMULATOR_HOST=replay_env.url, GOOGLE_CLOUD_PROJECT="t"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == report["exit_status"] == 1
    assert set(report) >= {"target", "run_id", "dry_run", "counts", "exit_status", "objects", "processed"}
    assert report["counts"]["ingested"] == 2 and report["counts"]["rejected"] == 1
    [rejected] = [o for o in report["objects"] if o["outcome"] == "rejected"]
    assert set(rejected) >= {"uri", "bucket", "name", "generation", "outcome", "reason", "quicktest_id"}
    assert rejected["reason"]
    assert "listed 3 objects, 3 metrics files" in proc.stderr
    _no_traceback(proc.stderr)


# ------------------------------------------------------------------- dev


def test_second_stack_on_a_busy_state_dir_is_refused(local_stack: LocalStack) -> None:
    """A second stack (dev or demo) on a folder whose stack is running is refused with the running
    one's pid and the way out, and leaves that stack's stack.json in place."""
    stack_file = local_stack.state_dir / "stack.json"
    assert stack_file.exists()
    second = LocalStack(local_stack.state_dir, database_url=local_stack.database_url)
    with pytest.raises(StackError, match=r"already running .*pid \d+.*another --state-dir"):
        second.start()
    assert stack_file.exists()  # the running stack can still be found (--add-row reads it)


def test_taken_port_is_reported_before_postgresql_starts(tmp_path: Path) -> None:
    """A function port already in use fails at once with the option to change, before pgserver
    creates anything in the state folder."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=rf"127.0.0.1:{port} is not free.*--function-port"):
            LocalStack(tmp_path / "state", function_port=port).start()
    assert not (tmp_path / "state" / "pgdata").exists()


def test_add_row_errors_are_messages_not_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dev --add-row` with no stack running (a stale stack.json of a dead process) exits 2 saying
    to start `dev`; with an unreachable DATABASE_URL it exits 1 with one line."""
    state = tmp_path / "state"
    state.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (state / "stack.json").write_text(json.dumps({"DATABASE_URL": "dbname=x", "pid": dead.pid}))
    assert main(["dev", "--state-dir", str(state), "--add-row"]) == 2
    assert "start `metrics-ingest dev` first" in capsys.readouterr().err

    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{_closed_port()}/x")
    assert main(["dev", "--state-dir", str(state), "--add-row"]) == 1
    err = capsys.readouterr().err
    assert "cannot create the QuickTest row" in err and "Connection refused" in err
    _no_traceback(err)


def test_help_lists_every_command_quickly() -> None:
    """`metrics-ingest --help` lists the four commands and returns at once (no heavy imports)."""
    started = time.monotonic()
    proc = subprocess.run(
        cli_command("--help"), cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert all(name in proc.stdout for name in ("migrate", "replay", "dev", "demo"))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dev", "--function-port", "70000"], "argument --function-port: must be 0..65535"),
        (["dev", "--emulator-port", "x"], "argument --emulator-port: expected a port number"),
        (["dev", "--bucket", "Bad_Bucket"], "argument --bucket: 'Bad_Bucket' is not a valid bucket name"),
        (["demo", "--epochs", "0"], "argument --epochs: must be >= 1"),
        (["demo", "--timeout", "-1"], "argument --timeout: must be > 0"),
    ],
)
def test_dev_and_demo_values_are_checked_by_the_parser(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An out-of-range port, a bad bucket name, zero epochs or a negative timeout is a usage error
    (status 2) before anything starts."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_host_or_database_is_a_stack_error(tmp_path: Path) -> None:
    """--host that is not this machine's, and a --database-url that cannot be used, each stop the
    stack with a StackError (a one-line message from the command) instead of a traceback."""
    with pytest.raises(StackError, match=r"--host 192\.0\.2\.1 is not an address of this machine"):
        LocalStack(tmp_path / "a", host="192.0.2.1").start()
    with pytest.raises(StackError, match=r"cannot prepare the database: invalid dsn"):
        LocalStack(tmp_path / "b", database_url="not a dsn").start()
    unreachable = f"postgresql://nobody@127.0.0.1:{_closed_port()}/x"
    with pytest.raises(StackError, match=r"cannot prepare the database: .*Connection refused"):
        LocalStack(tmp_path / "c", database_url=unreachable).start()


def test_migrate_without_database_url_says_what_it_tried(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`migrate` with DATABASE_URL unset and nothing at libpq's defaults fails (status 1) saying that
    DATABASE_URL is not set and how to give it."""
    monkeypatch.setenv("PGHOST", "/nonexistent")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "DATABASE_URL is not set" in err and "--database-url" in err


def test_version_and_a_mistyped_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the installed version; a mistyped flag is refused naming the nearest real one."""
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and re.fullmatch(r"metrics-ingest \d+\.\d+\.\d+\n", capsys.readouterr().out)
    with pytest.raises(SystemExit) as done:
        main(["replay", "gs://ml-artifacts", "--workrs", "3"])
    assert done.value.code == 2 and "did you mean --workers?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "gs://ml-artifacts", "--shard", "-1/3"], "--shard: expected I/N"),
        (["replay", "gs://ml-artifacts", "--shard", "\uff10/\uff12"], "--shard: expected I/N"),
        (["replay", "gs://ml-artifacts", "--since", "-5m"], "--since: expected a whole number"),
        (["replay", "gs://ml-artifacts", "--since", "99999999d"], "is more than 100 years"),
        (["export-mlflow", "--tracking-uri", "http://[::1"], "Invalid value for --tracking-uri"),
    ],
)
def test_bad_values_name_their_flag(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Negative, full-width, absurd and malformed values are one usage error naming the flag (exit 2)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "expected one argument" not in err and err.count("\n") == 1
