"""No password in anything the command line prints or writes: export-mlflow against the real MLflow server
(and its PostgreSQL store), dev --add-row against the session PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import parse_dsn

from metrics_ingest.cli import main
from tests.support.mlflow_server import MlflowServer
from tests.support.platform_db import PlatformDb

pytestmark = pytest.mark.slow  # the session's MLflow server (shared with the other export tests)

SECRET = "S3cr3tPW"
T0 = 1_790_000_000_000


@pytest.fixture(scope="module")
def run_id(mlflow_server: MlflowServer) -> str:
    """One small run logged through the real MLflow client."""
    [run] = mlflow_server.seed([{"name": "qt-secrets", "params": {"batch_size": "2048"},
                                 "metrics": [["loss", 0.5, 0, T0], ["loss", 0.25, 1, T0 + 1]]}])
    return run


@pytest.fixture
def row(platform_db: PlatformDb, run_id: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """A QuickTest row for the seeded run; DATABASE_URL at the session's platform database."""
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    row_id, _ = platform_db.new_quicktest()
    conn = platform_db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE ml_platform_quicktest SET mlflow_run_id = %s WHERE id = %s", (run_id, row_id))
    finally:
        conn.close()
    return row_id


def secret_forms(database_url: str) -> dict[str, str]:
    """Every way a password can sit in --mlflow-database-url, each pointing at the real MLflow store."""
    p = parse_dsn(database_url)
    host, port, db, user = p.get("host", "127.0.0.1"), p.get("port", "5432"), p["dbname"], p.get("user", "postgres")
    where = f"host={host}&port={port}"
    return {
        "query password": f"postgresql:///{db}?{where}&user={user}&password={SECRET}",
        "query sslpassword": f"postgresql:///{db}?{where}&user={user}&sslpassword={SECRET}",
        "encoded key": f"postgresql:///{db}?{where}&user={user}&pass%77ord={SECRET}",
        "user:pw@": f"postgresql://{user}:{SECRET}@/{db}?{where}",
        "sqlalchemy spelling": f"postgresql+psycopg2:///{db}?{where}&user={user}&password={SECRET}",
        "key=value": f"host={host} port={port} dbname={db} user={user} password='{SECRET}'",
    }


def scan(pieces: tuple[str, ...], *texts: str, folder: Path | None = None) -> None:
    """No piece of the secret in any text, nor in any file under ``folder``."""
    files = {str(p): p.read_text("utf-8") for p in folder.rglob("*") if p.is_file()} if folder else {}
    for where, text in [*((f"stream {i}", t) for i, t in enumerate(texts)), *files.items()]:
        for piece in pieces:
            assert piece not in text, f"{piece!r} in {where}: {text[:500]}"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_secret_form_reaches_stderr_stdout_json_or_a_file(
    mlflow_server: MlflowServer, row: int, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Each form exports for real (verified); the progress line, the summary, --json's source and the file
    written hold no password, and the source still names the database."""
    for name, url in secret_forms(mlflow_server.database_url).items():
        out_dir = tmp_path / name.replace(" ", "_").replace(":", "").replace("@", "")
        code, out, err = run_cli(capsys, "export-mlflow", "--mlflow-database-url", url, "--quicktest", str(row),
                                 "--output-dir", str(out_dir), "--json")
        report = json.loads(out)
        assert code == 0 and report["counts"]["verified"] == 1, (name, report, err)
        assert "***" in report["source"] and "MLflow database" in report["source"], name
        code, summary, err2 = run_cli(capsys, "export-mlflow", "--mlflow-database-url", url, "--quicktest", str(row),
                                      "--output-dir", str(out_dir))
        assert code == 0 and "***" in summary and "reading MLflow database" in err2, name
        scan((SECRET,), out, err, summary, err2, folder=out_dir)
        assert list(out_dir.rglob("training_metrics.json")), name


@pytest.mark.parametrize(
    ("args", "pieces", "flag"),
    [
        (["--mlflow-database-url", "postgresql://postgres:S3cr%zzPW@127.0.0.1/mlflow"], ("S3cr", "zzPW"),
         "--mlflow-database-url"),
        (["--mlflow-database-url", f"postgresql://postgres:{SECRET}/x9+w=@127.0.0.1/mlflow"], (SECRET, "x9+w"),
         "--mlflow-database-url"),  # a base64 password with '/': libpq would quote part of it as the port
        (["--tracking-uri", f"ftp://admin:{SECRET}@host"], (SECRET,), "--tracking-uri"),
        (["--tracking-uri", f"http://admin:{SECRET}@[::1"], (SECRET,), "--tracking-uri"),
        (["--tracking-uri", f"http://admin:{SECRET}@host:{SECRET}"], (SECRET,), "--tracking-uri"),
    ],
)
def test_a_malformed_url_is_one_line_naming_the_flag_never_the_value(
    row: int, args: list[str], pieces: tuple[str, ...], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2, one line that names the flag and says the value is not shown; no piece of the password anywhere."""
    code, out, err = run_cli(capsys, "export-mlflow", *args, "--quicktest", str(row), "--output-dir", str(tmp_path), "--json")
    assert code == 2 and err.strip().count("\n") == 0, err
    assert flag in err and "not shown" in err
    scan(pieces, out, err, folder=tmp_path)


def test_a_password_in_the_tracking_uri_is_masked_through_rest(
    mlflow_server: MlflowServer, row: int, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """user:password@ in --tracking-uri (sent as basic auth) exports for real; it is *** in every output."""
    host = mlflow_server.url.removeprefix("http://")
    code, out, err = run_cli(capsys, "export-mlflow", "--tracking-uri", f"http://admin:{SECRET}@{host}",
                             "--quicktest", str(row), "--output-dir", str(tmp_path), "--json")
    report: dict[str, Any] = json.loads(out)
    assert code == 0 and report["counts"]["verified"] == 1, report
    assert report["source"] == f"MLflow tracking server http://admin:***@{host}"
    scan((SECRET,), out, err, folder=tmp_path)


@pytest.mark.parametrize(
    ("url", "pieces"),
    [
        (f"postgresql://postgres:{SECRET}/x@127.0.0.1/db", (SECRET,)),  # libpq: invalid integer value "S3cr3tPW" ... "port"
        ("postgresql://postgres:S3cr%zzPW@127.0.0.1/db", ("S3cr", "zzPW")),  # libpq: invalid percent-encoded token
    ],
)
@pytest.mark.parametrize("via", ["--database-url", "DATABASE_URL"])
def test_dev_add_row_never_prints_libpqs_error_with_the_password(
    url: str, pieces: tuple[str, ...], via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """dev --add-row with a malformed URL fails naming the setting; libpq's message (which quotes it) is not shown."""
    args = ["dev", "--state-dir", str(tmp_path), "--add-row"]
    if via == "DATABASE_URL":
        monkeypatch.setenv("DATABASE_URL", url)
    else:
        args += ["--database-url", url]
    code, out, err = run_cli(capsys, *args)
    assert code != 0 and f"Invalid value for {via}: not a valid connection string" in err and "not shown" in err, err
    scan(pieces, out, err, folder=tmp_path)


def test_dev_add_row_keeps_the_server_error_without_the_password(
    platform_db: PlatformDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A good URL with a password and a missing table: PostgreSQL's own reason is printed, the password is not."""
    p = parse_dsn(platform_db.url)
    url = f"postgresql:///{p['dbname']}?host={p.get('host', '')}&port={p.get('port', '5432')}&user={p.get('user', 'postgres')}&password={SECRET}"
    monkeypatch.setenv("QUICKTEST_TABLE", "no_such_table")
    code, out, err = run_cli(capsys, "dev", "--state-dir", str(tmp_path), "--add-row", "--database-url", url)
    assert code == 1 and "no_such_table" in err and "does not exist" in err, err
    scan((SECRET,), out, err, folder=tmp_path)
