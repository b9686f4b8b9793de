"""``metrics-ingest replay`` over the GCS emulator and the session PostgreSQL."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import signal
import subprocess
import time
import uuid
import zlib
from typing import Any

import pytest

from metrics_ingest.cli import main
from metrics_ingest.localstack.emulator import Fault
from ingest.objects import ObjectRef
from ingest.config import Settings
from metrics_ingest.replay import (
    GcsTarget,
    ObjectOutcome,
    Progress,
    ReplayOptions,
    ReplayReport,
    Shard,
    UsageError,
    format_duration,
    format_line,
    format_summary,
    list_objects,
    parse_duration,
    parse_gs_uri,
    parse_shard,
    shard_from_env,
)
from tests.support.localstack import (
    REPO_ROOT,
    cli_command,
    cli_env,
    fill_bucket,
    histories,
    ingestion_records,
)

ALL_ZERO = {"ingested": 0, "duplicate": 0, "superseded": 0, "no_matching_row": 0, "rejected": 0, "unchanged": 0, "expired": 0,
            "failed": 0}


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
    # match_glob: GCS (here the emulator) returns the 330 metrics files, not the 40 model files.
    assert report["listed"] == 330 and report["metrics_objects"] == 330
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
        replay.ReplayOptions(parse_gs_uri(bucket.uri), dry_run=True, match_glob=False),  # list every object
        on_listing=on_listing,
        on_listed=progress.listed,
        on_outcome=progress.update,
    )
    progress.close()
    assert report.listed == 12 and [n for n, _ in calls] == [4, 8, 12] and calls[-1][1] == 3
    assert "\rlisting: 8 objects" in stream.getvalue() and "3/3" in stream.getvalue()


# --- sharding, --since, match_glob, one line per file (issues 9 and 10) -----------------


def _backdate(emulator: Any, bucket: str, name: str, when: dt.datetime) -> None:
    """Set an emulator object's ``updated`` time (GCS sets it; a test cannot wait three days)."""
    with emulator.storage.lock:
        emulator.storage.objects[bucket][name]["updated"] = when.isoformat().replace("+00:00", "Z")


def test_shard_duration_and_limits_are_parsed_or_refused() -> None:
    """--shard I/N, the Cloud Run task variables, --since and the workers cap: good values parse, bad
    ones are usage errors that name the mistake."""
    assert parse_shard("2/8") == Shard(2, 8) and str(Shard(2, 8)) == "2/8"
    for bad in ("8/8", "-1/4", "1/0", "a/b", "3", "1/10001"):
        with pytest.raises(UsageError, match="shard"):
            parse_shard(bad)
    assert shard_from_env({}) is None
    assert shard_from_env({"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "5"}) == Shard(3, 5)
    for env in ({"CLOUD_RUN_TASK_INDEX": "1"}, {"CLOUD_RUN_TASK_INDEX": "x", "CLOUD_RUN_TASK_COUNT": "2"}):
        with pytest.raises(UsageError, match="CLOUD_RUN_TASK"):
            shard_from_env(env)
    # The hash is CRC32 of the name, the same in every process (never Python's salted hash()).
    name = "quick_tests/00042/training_metrics.json"
    assert Shard(zlib.crc32(name.encode()) % 7, 7).takes(name)
    assert sum(Shard(i, 7).takes(name) for i in range(7)) == 1

    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("72h") == parse_duration("3d") == dt.timedelta(days=3)
    assert format_duration(parse_duration("72h")) == "3d" and format_duration(parse_duration("90s")) == "90s"
    for bad in ("72", "3 weeks", "0h", "-1d", "1.5h", "99999999d"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError, match="1 to 256"):
        ReplayOptions(GcsTarget("bucket-a"), workers=1_000_000_000)


def test_reasons_and_errors_print_as_one_clipped_line() -> None:
    """A multi-line reason (PostgreSQL's LINE 1: excerpt and its caret) prints on the object's one line,
    clipped; a 100 KB or over-long prefix is refused without echoing itself."""
    reason = 'database error: SyntaxError: syntax error at or near "x"\nLINE 1: SELECT x y\n                 ^\n' + "z" * 5000
    outcome = ObjectOutcome(ObjectRef("b", "q/2/training_metrics.json", 6), "failed", reason)
    line = format_line(outcome, dry_run=False)
    assert "\n" not in line and 'near "x" LINE 1: SELECT x y ^' in line and len(line) < 400
    report = ReplayReport(target=GcsTarget("b"), dry_run=False, force=False, workers=1, run_id="r", outcomes=[outcome])
    failed_lines = [l for l in format_summary(report).splitlines() if "q/2/training_metrics.json" in l]
    assert len(failed_lines) == 1 and "LINE 1:" in failed_lines[0] and len(failed_lines[0]) < 400

    with pytest.raises(UsageError, match="GCS object names are at most 1024 bytes") as exc:
        parse_gs_uri("gs://ml-artifacts/" + "q" * 100_000)
    assert len(str(exc.value)) < 300
    with pytest.raises(UsageError):
        parse_gs_uri("gs://ml-artifacts/" + "é" * 513)  # 1,026 bytes of UTF-8
    assert parse_gs_uri("gs://ml-artifacts/" + "q" * 1024).prefix == "q" * 1024


def test_over_long_prefix_and_absurd_workers_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """`replay` with a 100 KB prefix exits 2 with one short line; --workers 1000000000 exits 2 at once."""
    assert main(["replay", "gs://ml-artifacts/" + "q" * 100_000]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and len(err) < 400 and "1024 bytes" in err
    started = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(["replay", "gs://ml-artifacts", "--workers", "1000000000"])
    assert exc.value.code == 2 and time.monotonic() - started < 5
    assert "at most 256" in capsys.readouterr().err
    for bad in (["--shard", "4/4"], ["--since", "72"]):
        assert main(["replay", "gs://ml-artifacts", *bad]) == 2
        assert bad[0].lstrip("-") in capsys.readouterr().err


def test_match_glob_lists_only_metrics_files(replay_env: Any, platform_db: Any) -> None:
    """With match_glob the emulator returns only the metrics files; without it every object, and the
    names are re-checked either way."""
    from google.cloud import storage

    bucket = fill_bucket(replay_env, platform_db.url, valid=5, other=50)
    client = storage.Client(project="local-test")
    # An object whose name only ends like the metrics file: neither listing may keep it.
    client.bucket(bucket.name).blob("quick_tests/00000/old_training_metrics.json").upload_from_string(b"{}")
    settings = Settings()
    globbed = list_objects(client, parse_gs_uri(bucket.uri), settings)
    full = list_objects(client, parse_gs_uri(bucket.uri), settings, match_glob=False)
    assert globbed.match_glob == "**/training_metrics.json" and full.match_glob is None
    assert globbed.listed == 5 and full.listed == 56
    assert sorted(r.name for r in globbed.refs) == sorted(r.name for r in full.refs) == sorted(bucket.valid)


def _shard_run(bucket_uri: str, url: str, emulator_url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command("replay", bucket_uri, "--workers", "2", "--json", *args),
        cwd=REPO_ROOT,
        env=cli_env(DATABASE_URL=url, STORAGE_EMULATOR_HOST=emulator_url, GOOGLE_CLOUD_PROJECT="local-test", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sharded_replays_take_every_file_exactly_once(
    replay_env: Any, platform_db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three shard processes at once (two with --shard, one by the Cloud Run task variables) over a few
    hundred files: each file is processed by exactly one shard, and the union of outcomes is the
    unsharded replay's."""
    url = platform_db.url
    bucket = fill_bucket(replay_env, url, valid=240, broken=10, rowless=10, other=30)
    code, whole = _replay_json(capsys, bucket.uri, "--dry-run")
    expected = {o["name"]: o["outcome"] for o in whole["objects"]}
    assert len(expected) == 260

    procs = [
        _shard_run(bucket.uri, url, replay_env.url, "--shard", "0/3"),
        _shard_run(bucket.uri, url, replay_env.url, "--shard", "1/3"),
        _shard_run(bucket.uri, url, replay_env.url, CLOUD_RUN_TASK_INDEX="2", CLOUD_RUN_TASK_COUNT="3"),
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err  # the broken files are rejected: a failed task
        reports.append(json.loads(out))
    assert [r["shard"] for r in reports] == [{"index": i, "count": 3} for i in range(3)]
    seen: dict[str, str] = {}
    for report in reports:
        for o in report["objects"]:
            assert o["name"] not in seen, f"{o['name']} processed twice"
            seen[o["name"]] = o["outcome"]
        assert report["skipped"]["other_shards"] == 260 - len(report["objects"])
        assert 40 < len(report["objects"]) < 130  # CRC32 spreads the names
    assert seen == expected
    records = ingestion_records(url, bucket.name)
    assert len(records) == 260 and len({r["object_name"] for r in records}) == 260


def test_a_shard_with_no_files_exits_0_with_a_note(
    replay_env: Any, platform_db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard that the hash gives nothing succeeds and says why it did nothing."""
    bucket = fill_bucket(replay_env, platform_db.url, valid=1)
    [name] = bucket.valid
    empty = (zlib.crc32(name.encode()) + 1) % 2
    code = main(["replay", bucket.uri, "--shard", f"{empty}/2"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"note: nothing to replay in shard {empty}/2" in captured.err and "1 metrics files in other shards" in captured.err
    assert f"(shard {empty}/2)" in captured.out
    assert ingestion_records(platform_db.url, bucket.name) == []


def test_since_takes_recent_objects_and_never_touches_older_ones(
    replay_env: Any, platform_db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since 72h ingests the objects updated within 72 hours; older ones are counted as skipped, never
    downloaded nor recorded, and their rows keep what they held."""
    url = platform_db.url
    bucket = fill_bucket(replay_env, url, valid=6)
    names = sorted(bucket.valid)
    old, recent = names[:3], names[3:]
    now = dt.datetime.now(dt.timezone.utc)
    for days, name in zip((4, 30, 400), old):
        _backdate(replay_env, bucket.name, name, now - dt.timedelta(days=days))
    _backdate(replay_env, bucket.name, recent[0], now - dt.timedelta(hours=71))
    fault = replay_env.inject(Fault("GET", "|".join(re.escape(n) for n in old), status=500, times=10**6))

    code, report = _replay_json(capsys, bucket.uri, "--since", "72h")
    assert code == 0
    assert report["since"] == "3d" and report["skipped"] == {"other_shards": 0, "outside_since": 3}
    assert sorted(o["name"] for o in report["objects"]) == recent
    assert report["counts"]["ingested"] == 3
    assert fault.hits == 0  # never downloaded
    assert {r["object_name"] for r in ingestion_records(url, bucket.name)} == set(recent)
    rows = histories(url, [bucket.valid[n] for n in old])
    assert all(h is None for h in rows.values())

    main(["replay", bucket.uri, "--since", "72h"])
    summary = capsys.readouterr().out
    assert "updated in the last 3d" in summary and "3 not updated within 3d, skipped" in summary


@pytest.mark.slow
def test_reconciliation_after_an_outage_ingests_what_events_missed(
    local_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files uploaded while events were not delivered (the bridge off) reach their rows after one sharded
    replay; files the function already ingested come back `duplicate` without being downloaded."""
    from google.cloud import storage

    from metrics_ingest.localstack.stack import fetch_history
    from tests.support.documents import dumps, v1_document

    for key, value in local_stack.env().items():
        monkeypatch.setenv(key, value)
    bucket = storage.Client(project="local-test").bucket(local_stack.bucket)
    prefix = f"reconcile-{uuid.uuid4().hex[:8]}"

    def upload(count: int) -> dict[str, int]:
        made = {}
        for i in range(count):
            quicktest_id, folder = local_stack.add_quicktest(f"gs://{local_stack.bucket}/{prefix}/{uuid.uuid4().hex[:8]}")
            name = folder.split("/", 3)[3] + "/training_metrics.json"
            bucket.blob(name).upload_from_string(dumps(v1_document(2, seed=i)), content_type="application/json")
            made[name] = quicktest_id
        return made

    delivered = upload(8)
    for name, quicktest_id in delivered.items():
        assert local_stack.wait_for_history(quicktest_id, timeout=30) is not None, name
    monkeypatch.setattr(local_stack.emulator.storage, "_on_finalize", None)  # the outage: no events
    missed = upload(8)
    time.sleep(0.5)
    assert all(h is None for h in histories(local_stack.database_url, list(missed.values())).values())
    fault = local_stack.emulator.inject(
        Fault("GET", "|".join(re.escape(n) for n in delivered), status=500, times=10**6)
    )
    try:
        procs = [
            _shard_run(f"gs://{local_stack.bucket}/{prefix}", local_stack.database_url, local_stack.emulator_url,
                       "--since", "1h", CLOUD_RUN_TASK_INDEX=str(i), CLOUD_RUN_TASK_COUNT="2")
            for i in range(2)
        ]
        outcomes: dict[str, str] = {}
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            outcomes.update({o["name"]: o["outcome"] for o in json.loads(out)["objects"]})
    finally:
        local_stack.emulator.clear_faults()
    assert fault.hits == 0
    assert outcomes == {**{n: "duplicate" for n in delivered}, **{n: "ingested" for n in missed}}
    for name, quicktest_id in missed.items():
        history = fetch_history(local_stack.database_url, quicktest_id)
        assert history is not None and history["source"]["object"] == name


def test_a_terminal_names_the_files_that_matched_no_row() -> None:
    """On a terminal the replay ends by naming the no_matching_row files: the first few and a count."""
    outcomes = [ObjectOutcome(ObjectRef("b", f"q/{i}/training_metrics.json", i + 1), "no_matching_row", "no row")
                for i in range(7)]
    report = ReplayReport(target=GcsTarget("b"), dry_run=False, force=False, workers=1, run_id="r",
                          outcomes=outcomes, matched=7)
    terminal, plain = io.StringIO(), io.StringIO()
    Progress(terminal, dry_run=False, tty=True).finish(report)
    Progress(plain, dry_run=False, tty=False).finish(report)
    text = terminal.getvalue()
    assert "7 metrics file(s) matched no QuickTest row" in text and "gs://b/q/0/training_metrics.json" in text
    assert "gs://b/q/4/" in text and "gs://b/q/5/" not in text and "and 2 more" in text
    assert plain.getvalue() == ""
