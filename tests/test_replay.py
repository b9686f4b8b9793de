"""``metrics-ingest replay`` over the GCS emulator and the session PostgreSQL."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from metrics_ingest.cli import main
from metrics_ingest.localstack.emulator import Fault
from ingest.objects import ObjectRef
from metrics_ingest.replay import GcsTarget, ObjectOutcome, Progress, UsageError, parse_gs_uri
from tests.support.localstack import (
    REPO_ROOT,
    cli_command,
    cli_env,
    fill_bucket,
    histories,
    ingestion_records,
)

ALL_ZERO = {"ingested": 0, "duplicate": 0, "superseded": 0, "no_matching_row": 0, "rejected": 0, "failed": 0}


def _replay_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["replay", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_parse_gs_uri_accepts_bucket_and_prefix() -> None:
    """A gs:// URI splits into bucket and prefix; anything else is a usage error."""
    assert parse_gs_uri("gs://ml-artifacts") == GcsTarget("ml-artifacts", "")
    assert parse_gs_uri("gs://ml-artifacts/quick_tests/42") == GcsTarget("ml-artifacts", "quick_tests/42")
    for bad in ("s3://bucket/x", "ml-artifacts/quick_tests", "gs://", "gs://UPPER/x", "gs://a/x"):
        with pytest.raises(UsageError):
            parse_gs_uri(bad)


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    """On a terminal tqdm draws a bar and prints only rejections and failures; elsewhere every
    object gets one plain line."""
    ok = ObjectOutcome(ObjectRef("b", "q/1/training_metrics.json", 5), "ingested")
    bad = ObjectOutcome(ObjectRef("b", "q/2/training_metrics.json", 6), "rejected", "the file is empty")
    for tty in (True, False):
        stream = io.StringIO()
        progress = Progress(stream, dry_run=False, tty=tty)
        progress.listed(10, 2)
        progress.update(ok)
        progress.update(bad)
        progress.close()
        text = stream.getvalue()
        assert "rejected        gs://b/q/2/training_metrics.json#6: the file is empty" in text
        if tty:
            assert "2/2" in text and "q/1/training_metrics.json" not in text
        else:
            assert text.splitlines() == [
                "listed 10 objects, 2 metrics files",
                "ingested        gs://b/q/1/training_metrics.json#5",
                "rejected        gs://b/q/2/training_metrics.json#6: the file is empty",
            ]


def test_usage_errors_exit_2(replay_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad URI, a bad --workers or a missing argument exits with status 2 and says why."""
    assert main(["replay", "s3://bucket/prefix"]) == 2
    assert "gs://BUCKET" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["replay", "gs://ml-artifacts", "--workers", "0"])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["replay", "gs://no-such-bucket-here"]) == 2
    assert "no-such-bucket-here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["replay"])
    assert exc.value.code == 2


def test_replay_counts_reruns_force_and_dry_run(
    replay_env: Any, platform_db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """300 valid, 20 broken and 10 rowless files: exact counts, status 1, reasons listed; a rerun
    writes nothing, --force re-ingests, --dry-run writes nothing."""
    url = platform_db.url
    bucket = fill_bucket(replay_env, url, valid=300, broken=20, rowless=10, other=40)
    ids = list(bucket.valid.values()) + [qt for _, qt in bucket.broken.values()]

    # Dry run first: every outcome decided, nothing written.
    code, report = _replay_json(capsys, bucket.uri, "--workers", "4", "--dry-run")
    assert code == 1
    assert report["counts"] == {**ALL_ZERO, "ingested": 300, "no_matching_row": 10, "rejected": 20}
    assert report["listed"] == 370 and report["metrics_objects"] == 330
    assert all(h is None for h in histories(url, ids).values())
    assert ingestion_records(url, bucket.name) == []

    # The replay itself.
    code, report = _replay_json(capsys, bucket.uri, "--workers", "4")
    assert code == 1
    assert report["counts"] == {**ALL_ZERO, "ingested": 300, "no_matching_row": 10, "rejected": 20}
    by_name = {o["name"]: o for o in report["objects"]}
    assert {n for n, o in by_name.items() if o["outcome"] == "rejected"} == set(bucket.broken)
    assert {n for n, o in by_name.items() if o["outcome"] == "no_matching_row"} == set(bucket.rowless)
    assert all(by_name[n]["reason"] for n in bucket.broken)
    after_first = histories(url, ids)
    for name, qt in bucket.valid.items():
        assert after_first[qt]["epochs"] == bucket.documents[name]["epochs"]
        assert after_first[qt]["source"]["object"] == name
    assert all(after_first[qt] is None for _, qt in bucket.broken.values())
    records = ingestion_records(url, bucket.name)
    assert sorted(r["outcome"] for r in records).count("ingested") == 300

    # Again, as a person runs it: the table lists every rejection with its reason.
    code = main(["replay", bucket.uri, "--workers", "4"])
    out = capsys.readouterr().out
    assert code == 1
    counts = dict(re.findall(r"^  (\w[\w ]*?)\s+(\d+)$", out, re.MULTILINE))
    assert counts["duplicate"] == "300" and counts["ingested"] == "0" and counts["rejected"] == "20"
    for name in bucket.broken:
        line = next(line for line in out.splitlines() if name in line)
        assert by_name[name]["reason"] in line
    assert histories(url, ids) == after_first  # nothing written

    # --force re-ingests every generation already done.
    code, report = _replay_json(capsys, bucket.uri, "--workers", "4", "--force")
    assert report["counts"] == {**ALL_ZERO, "ingested": 300, "no_matching_row": 10, "rejected": 20}
    forced = histories(url, ids)
    assert all(forced[qt]["ingested_at"] > after_first[qt]["ingested_at"] for qt in bucket.valid.values())

    # A dry run after all that still writes nothing (rows, records).
    before = len(ingestion_records(url, bucket.name))
    code, report = _replay_json(capsys, bucket.uri, "--workers", "4", "--dry-run")
    assert report["counts"]["duplicate"] == 300 and report["dry_run"] is True
    assert len(ingestion_records(url, bucket.name)) == before
    assert histories(url, ids) == forced


def test_prefix_limits_the_replay(replay_env: Any, platform_db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the objects under the prefix are replayed; a clean replay exits 0."""
    bucket = fill_bucket(replay_env, platform_db.url, valid=12)
    code, report = _replay_json(capsys, f"gs://{bucket.name}/quick_tests/0000")
    assert code == 0
    assert report["counts"] == {**ALL_ZERO, "ingested": 10}
    assert {o["name"][:16] for o in report["objects"]} == {"quick_tests/0000"}


def test_transient_faults_are_retried_then_reported_failed(
    replay_env: Any, platform_db: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GCS 503 is retried; one that persists is reported as failed (status 1, the same JSON keys
    as any object), the row untouched."""
    monkeypatch.setenv("GCS_TIMEOUT_SECONDS", "1")  # the client's own retry budget per try
    bucket = fill_bucket(replay_env, platform_db.url, valid=2)
    first, second = sorted(bucket.valid)
    replay_env.inject(Fault("GET", re.escape(first), status=503, times=1))
    replay_env.inject(Fault("GET", re.escape(second), status=503, times=1000))
    code, report = _replay_json(capsys, bucket.uri, "--workers", "2")
    outcomes = {o["name"]: o for o in report["objects"]}
    assert code == 1
    assert outcomes[first]["outcome"] == "ingested"
    assert outcomes[second]["outcome"] == "failed" and "transient" in outcomes[second]["reason"]
    assert set(outcomes[second]) == set(outcomes[first])  # --json: the same keys for every object
    assert histories(platform_db.url, [bucket.valid[second]])[bucket.valid[second]] is None


def test_interrupted_replay_leaves_no_partly_written_row(replay_env: Any, platform_db: Any) -> None:
    """SIGINT mid-replay: exit 130 with a partial summary; every row is untouched or holds a
    complete document that an `ingested` record accounts for."""
    url = platform_db.url
    bucket = fill_bucket(replay_env, url, valid=300, epochs=5)
    # Slow every download a little so the signal lands mid-run.
    replay_env.inject(Fault("GET", rf"/b/{bucket.name}/o/.*training_metrics", status=None, delay=0.05, times=10**6))
    proc = subprocess.Popen(
        cli_command("replay", bucket.uri, "--workers", "4"),
        cwd=REPO_ROOT,
        env=cli_env(DATABASE_URL=url, STORAGE_EMULATOR_HOST=replay_env.url, GOOGLE_CLOUD_PROJECT="local-test"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    done = 0
    deadline = time.monotonic() + 60
    while done < 20 and time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, "replay ended before it could be interrupted"
        done += line.startswith("ingested")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted" in out

    rows = histories(url, list(bucket.valid.values()))
    ingested = {r["object_name"]: r for r in ingestion_records(url, bucket.name) if r["outcome"] == "ingested"}
    filled = [qt for qt, h in rows.items() if h is not None]
    assert 20 <= len(filled) < 300
    for name, qt in bucket.valid.items():
        history = rows[qt]
        if history is None:
            assert name not in ingested
            continue
        original = bucket.documents[name]
        assert history["epochs"] == original["epochs"]
        assert history["loss"] == original["loss"] and history["weight_stats"] == original["weight_stats"]
        assert str(ingested[name]["generation"]) == str(history["source"]["generation"])
        assert ingested[name]["quicktest_id"] == qt


def test_listing_reports_progress_before_the_first_file(
    replay_env: Any, platform_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long listing is not silent: on_listing gets the running counts every page-sized step, and
    on a terminal the progress shows them on one line rewritten in place."""
    import metrics_ingest.replay as replay

    bucket = fill_bucket(replay_env, platform_db.url, valid=3, other=9)
    monkeypatch.setattr(replay, "LISTING_REPORT_EVERY", 4)
    calls: list[tuple[int, int]] = []
    stream = io.StringIO()
    progress = Progress(stream, dry_run=True, tty=True)

    def on_listing(listed: int, matched: int) -> None:
        calls.append((listed, matched))
        progress.listing(listed, matched)

    report = replay.run_replay(
        replay.ReplayOptions(parse_gs_uri(bucket.uri), dry_run=True),
        on_listing=on_listing,
        on_listed=progress.listed,
        on_outcome=progress.update,
    )
    progress.close()
    assert report.listed == 12 and [n for n, _ in calls] == [4, 8, 12] and calls[-1][1] == 3
    assert "\rlisting: 8 objects" in stream.getvalue() and "3/3" in stream.getvalue()
