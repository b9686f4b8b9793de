"""export-mlflow's mapping of one MLflow run to a schema-v1 document, and its verification (no MLflow server but
in the last test; the jsonb round trip uses the session PostgreSQL)."""

from __future__ import annotations

import copy
import io
import json
import math
import struct
from pathlib import Path

import pytest

from metrics_ingest.cli import main
from metrics_ingest.mlflow_export import MappingFileError, MlflowRun, NameRules, Point, build_document, verify_document
from metrics_ingest.mlflow_export.engine import ExportProgress, QuickTestRow, RowOutcome
from metrics_ingest.mlflow_export.values import EMPTY_NAME, document_problem, param_text, param_value
from tests.support.format_checks import check_document
from tests.support.mlflow_server import MlflowServer
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.postgres import query


def make_run(metrics: dict[str, list[tuple[int, float]]], params: dict[str, str] | None = None) -> MlflowRun:
    return MlflowRun(
        run_id="r" * 32, experiment_id="3", run_name="qt", status="FINISHED", lifecycle_stage="active",
        start_time=1_700_000_000_000, end_time=1_700_000_900_000, tags={"mlflow.user": "trainer"},
        params=params or {},
        metrics={k: [Point(step, 1_700_000_000_000 + step, value) for step, value in pts] for k, pts in metrics.items()},
    )


def places(rules: NameRules, run: MlflowRun) -> dict[str, list[str]]:
    export = build_document(run, rules)
    return {k: [str(loc) for loc in p.locations] for k, p in export.plan.placements.items()}


def test_default_rules_cover_the_old_callbacks_spellings() -> None:
    """Weight norms, weight and gradient statistics in underscore and slash spellings land in their sections;
    everything else is routed as the trainer routes it."""
    series = [(0, 1.0), (1, 2.0)]
    run = make_run({name: series for name in (
        "weight_norm", "query_weight_norm", "weight_norm/candidate", "query_weights_std", "weights/candidate/max",
        "gradients/query/norm", "candidate_gradient_mean", "grad_stats/query/min", "val_loss", "learning_rate",
        "test_loss", "final_recall_at_100",
    )})
    got = places(NameRules.default(), run)
    assert got["weight_norm"] == ["gradient.total"]
    assert got["query_weight_norm"] == ["gradient.query"]
    assert got["weight_norm/candidate"] == ["gradient.candidate"]
    assert got["query_weights_std"] == ["weight_stats.query.std"]
    assert got["weights/candidate/max"] == ["weight_stats.candidate.max"]
    assert got["gradients/query/norm"] == ["gradient_stats.query.norm"]
    assert got["candidate_gradient_mean"] == ["gradient_stats.candidate.mean"]
    assert got["grad_stats/query/min"] == ["gradient_stats.query.min"]
    assert got["val_loss"] == ["loss.val_loss"]
    assert got["learning_rate"] == ["metrics.learning_rate"]
    assert got["test_loss"][0] == "final_metrics.test_loss"
    check_document(build_document(run, NameRules.default()).document)


def test_histograms_assemble_from_bins_and_an_edges_param() -> None:
    """Per-bin count metrics plus a bin-edges param become one histogram with a counts row per epoch."""
    run = make_run(
        {f"gradients/query/histogram/{i}": [(0, float(i)), (2, float(10 + i))] for i in range(3)} | {"loss": [(1, 0.5)]},
        params={"gradients/query/histogram/edges": "[-1, 0, 1, 2]"},
    )
    doc = build_document(run, NameRules.default()).document
    assert doc["epochs"] == [0, 1, 2]
    assert doc["gradient_stats"]["query"]["histogram"] == {"bin_edges": [-1.0, 0.0, 1.0, 2.0], "counts": [[0, 1, 2], None, [10, 11, 12]]}
    assert doc["params"]["gradients/query/histogram/edges"] == "[-1, 0, 1, 2]"
    check_document(doc)
    assert verify_document(doc, run, NameRules.default()) is None


def test_nothing_is_dropped_when_a_rule_cannot_apply() -> None:
    """A histogram without edges, a second name for a taken place, and a final value logged at several steps
    all keep every value (in metrics/loss, beside the final value)."""
    run = make_run({
        "query_weight_hist_0": [(0, 3.0)], "query_weight_hist_1": [(0, 4.0)],
        "query_weight_norm": [(0, 1.0)], "weight_norm/query": [(0, 9.0)],
        "final_loss": [(0, 0.9), (1, 0.7)],
    })
    export = build_document(run, NameRules.default())
    doc = export.document
    assert doc["metrics"]["query_weight_hist_0"] == [3.0, None] and doc["metrics"]["query_weight_hist_1"] == [4.0, None]
    assert "no bin-edges param" in export.plan.placements["query_weight_hist_0"].note
    assert doc["gradient"] == {"query": [1.0, None]} and doc["metrics"]["weight_norm/query"] == [9.0, None]
    assert doc["final_metrics"]["final_loss"] == 0.7 and doc["loss"]["final_loss"] == [0.9, 0.7]
    check_document(doc)
    assert verify_document(doc, run, NameRules.default()) is None


def test_a_mapping_file_adds_rules_tried_first(tmp_path: Path) -> None:
    """Rules from --mapping FILE route names the defaults do not know, ahead of the defaults."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({
        "metrics": [{"pattern": r"l2/(?P<tower>\w+)", "to": "gradient"},
                    {"pattern": r"w_(?P<tower>\w+)_avg", "to": "weight_stats", "stat": "mean"},
                    {"pattern": "test_lr", "to": "metrics"}],
    }))
    rules = NameRules.load(mapping)
    run = make_run({"l2/query": [(0, 1.0)], "w_candidate_avg": [(0, 0.1)], "test_lr": [(0, 0.01)]})
    assert places(rules, run) == {
        "l2/query": ["gradient.query"], "w_candidate_avg": ["weight_stats.candidate.mean"], "test_lr": ["metrics.test_lr"],
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"metrics": [{"pattern": "x", "to": "nowhere"}]}', "unknown target 'nowhere'"),
        ('{"metrics": [{"pattern": "x", "to": "gradient"}]}', "needs a (?P<tower>...) group"),
        ('{"metrics": [{"pattern": "(", "to": "loss"}]}', "not a valid regular expression"),
        ('{"metrics": [{"pattern": "(?P<tower>x)", "to": "weight_stats", "stat": "norm"}]}', "has no statistic 'norm'"),
        ('{"rules": []}', "must be a JSON object"),
    ],
)
def test_a_bad_mapping_file_names_the_problem(tmp_path: Path, content: str, message: str) -> None:
    """A mapping file that cannot be used is refused with the rule and the reason."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(content)
    with pytest.raises(MappingFileError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        NameRules.load(mapping)


def test_verification_names_the_first_difference() -> None:
    """A changed value, a dropped param or an extra series is a mismatch that says where."""
    run = make_run({"loss": [(0, 1.0), (1, 0.5)], "auc": [(1, 0.7)]}, params={"lr": "0.1"})
    doc = build_document(run, NameRules.default()).document
    assert verify_document(doc, run, NameRules.default()) is None
    changed = copy.deepcopy(doc)
    changed["loss"]["loss"][1] = 0.25
    assert "loss.loss at epoch 1" in verify_document(changed, run, NameRules.default())
    no_param = copy.deepcopy(doc)
    del no_param["params"]["lr"]
    assert verify_document(no_param, run, NameRules.default()) == "params.lr is missing"
    extra = copy.deepcopy(doc)
    extra["metrics"]["ghost"] = [None, 1.0]
    assert "metrics.ghost is in the document but not in MLflow" in verify_document(extra, run, NameRules.default())
    filled = copy.deepcopy(doc)
    filled["metrics"]["auc"][0] = 0.0
    assert "MLflow has nothing" in verify_document(filled, run, NameRules.default())


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    """On a terminal the bar counts rows and prints only rows not done; elsewhere each row gets one line."""
    done = RowOutcome(QuickTestRow(1, "a" * 32, "gs://b/q/1"), "exported", verification="verified", epochs=3, points=9)
    missing = RowOutcome(QuickTestRow(2, "b" * 32, "gs://b/q/2"), "missing_run", "MLflow has no run 'bbb'")
    for tty in (True, False):
        stream = io.StringIO()
        progress = ExportProgress(stream, dry_run=False, tty=tty)
        progress.selected(2)
        progress.update(done)
        progress.update(missing)
        progress.close()
        text = stream.getvalue()
        assert "missing_run        quicktest 2 (run " + "b" * 32 + ") (MLflow has no run 'bbb')" in text
        if tty:
            assert "2/2" in text and "quicktest 1" not in text
        else:
            assert text.splitlines()[:2] == [
                "selected 2 QuickTest rows",
                "exported+verified  quicktest 1 (run " + "a" * 32 + "): 3 epochs, 9 points",
            ]


# ---------------------------------------------------------------- names, values, steps


def test_an_empty_name_is_renamed_and_its_values_kept() -> None:
    """An empty metric, param and tag name become "(empty name)" (numbered when taken); the document is valid,
    the dry run's lines name the rename, and the verification passes."""
    run = make_run({"": [(0, 1.0), (1, 2.0)], "(empty name)": [(0, 3.0)]}, params={"": "x", "lr": "0.1"})
    run.tags[""] = "t"
    export = build_document(run, NameRules.default())
    doc = export.document
    assert doc["metrics"] == {"(empty name 2)": [1.0, 2.0], "(empty name)": [3.0, None]}
    assert doc["params"] == {"(empty name)": "x", "lr": 0.1} and doc["mlflow"]["tags"][EMPTY_NAME] == "t"
    check_document(doc)
    assert document_problem(doc) is None
    assert verify_document(doc, run, NameRules.default()) is None
    lines = export.plan.describe(run.params)
    assert "metric '' -> metrics.(empty name 2) (2 steps); renamed: the format needs a name of at least one character" in lines
    assert "param '' -> params.(empty name) (renamed: the format needs a name of at least one character)" in lines


def test_the_dry_runs_check_is_the_functions_validator() -> None:
    """A document the function would refuse (a param string over 6,000 characters) is named, not passed."""
    doc = build_document(make_run({"loss": [(0, 1.0)]}, params={"huge": "h" * 8000}), NameRules.default()).document
    problem = document_problem(doc)
    assert problem is not None and "params" in problem and "huge" in problem


@pytest.mark.parametrize(
    ("text", "value"),
    [("2048", 2048), ("0.01", 0.01), ("-5", -5), ("1e-05", 1e-05), ("1.0", 1.0), ("true", True), ("false", False),
     ("True", "True"), ("[128, 64]", "[128, 64]"), ("007", "007"), ("-0", "-0"), ("-0.0", "-0.0"), ("1e+20", "1e+20"),
     ("1e5", "1e5"), ("NaN", "NaN"), ("inf", "inf"), ("1_000", "1_000"), (" 5", " 5"), ("", ""),
     ("9007199254740993", "9007199254740993"), ("null", "null")],
)
def test_a_param_is_a_number_or_boolean_only_where_its_string_comes_back(text: str, value: object) -> None:
    """MLflow's string becomes a JSON number/boolean only where that value's own spelling is the string."""
    got = param_value(text)
    assert got == value and type(got) is type(value)
    assert param_text(got) == text


def test_params_and_negative_zero_round_trip_through_postgresqls_jsonb(empty_database_url: str) -> None:
    """Stored as the row stores it (jsonb) and read back, every param's string form is MLflow's, -0.0 is 0.0,
    and the verification passes: the rule it states is the one the row keeps."""
    texts = ["2048", "0.01", "1e-05", "123.456", "-7", "true", "false", "True", "[128, 64]", "1e+20", "-0.0", "4e-320"]
    run = make_run({"loss": [(0, -0.0), (1, 0.5)], "auc": [(0, 5e-324), (1, 1.7e308)]},
                   params={f"p{i}": t for i, t in enumerate(texts)})
    doc = build_document(run, NameRules.default()).document
    assert math.copysign(1.0, doc["loss"]["loss"][0]) == 1.0  # written as 0.0
    [(row,)] = query(empty_database_url, "SELECT %s::jsonb", (json.dumps(doc),))
    assert {k: param_text(v) for k, v in row["params"].items()} == run.params
    assert verify_document(row, run, NameRules.default()) is None
    assert struct.pack("<d", row["metrics"]["auc"][0]) == struct.pack("<d", 5e-324) and float(row["metrics"]["auc"][1]) == 1.7e308
    tampered = copy.deepcopy(row)
    tampered["params"]["p0"] = 2049
    assert "params.p0" in verify_document(tampered, run, NameRules.default())


def test_a_final_value_keeps_its_step(tmp_path: Path) -> None:
    """A single-step final_/test_ metric, and one a --mapping rule sends to final_metrics, keep their series
    at their step beside the last value in final_metrics."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"metrics": [{"pattern": "lr_end", "to": "final_metrics"}]}))
    rules = NameRules.load(mapping)
    run = make_run({"loss": [(0, 1.0), (1, 0.5), (2, 0.25)], "final_loss": [(2, 0.2)], "test_auc": [(1, 0.9)],
                    "lr_end": [(2, 0.001)]})
    export = build_document(run, rules)
    doc = export.document
    assert doc["final_metrics"] == {"final_loss": 0.2, "test_auc": 0.9, "lr_end": 0.001}
    assert doc["loss"]["final_loss"] == [None, None, 0.2]
    assert doc["metrics"]["test_auc"] == [None, 0.9, None] and doc["metrics"]["lr_end"] == [None, None, 0.001]
    check_document(doc)
    assert verify_document(doc, run, rules) is None
    moved = copy.deepcopy(doc)
    moved["metrics"]["test_auc"] = [0.9, None, None]
    assert "metrics.test_auc at epoch 0" in verify_document(moved, run, rules)


@pytest.mark.slow
def test_empty_names_and_typed_params_export_through_mlflow_and_the_row(
    mlflow_server: MlflowServer, platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against the real MLflow server: empty names (as older stores hold them) neither block the run nor the dry
    run; params arrive typed; --verify-only passes on the row (REST says it cannot read an empty name); a document the function would refuse is `failed`
    in the dry run, never "would export"."""
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", artifacts.emulator.url)
    good, bad = mlflow_server.seed([
        {"name": "qt-names", "params": {"batch_size": "2048", "lr": "0.01", "flag": "true", "layers": "[128, 64]"},
         "metrics": [["loss", 0.5, 0, 1], ["loss", -0.0, 1, 2], ["test_auc", 0.9, 1, 3]]},
        {"name": "qt-too-long", "metrics": [["loss", 0.5, 0, 1]]},
    ])
    for table, columns, values in (
        ("metrics", "(key, value, timestamp, run_uuid, step, is_nan)", ("", 7.0, 1, good, 0, False)),
        ("latest_metrics", "(key, value, timestamp, run_uuid, step, is_nan)", ("", 7.0, 1, good, 0, False)),
        ("params", "(key, value, run_uuid)", ("", "p", good)),
        ("tags", "(key, value, run_uuid)", ("", "t", good)),
        ("params", "(key, value, run_uuid)", ("huge", "h" * 8000, bad)),
    ):
        mlflow_server.sql(f"INSERT INTO {table} {columns} VALUES ({', '.join(['%s'] * len(values))})", values)
    rows = {}
    for name, run_id in (("good", good), ("bad", bad)):
        rows[name], _ = platform_db.new_quicktest()
        with platform_db.connect() as conn, conn.cursor() as cur:
            cur.execute("UPDATE ml_platform_quicktest SET mlflow_run_id = %s WHERE id = %s", (run_id, rows[name]))
        conn.close()
    url = mlflow_server.database_url
    selection = ["--quicktest", str(rows["good"]), "--quicktest", str(rows["bad"])]
    assert main(["export-mlflow", "--mlflow-database-url", url, *selection, "--dry-run", "--json"]) == 1
    dry = {r["quicktest_id"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert dry[rows["good"]]["outcome"] == "exported"  # "would export"
    assert "metric '' -> metrics.(empty name) (1 step); renamed" in " ".join(dry[rows["good"]]["placements"])
    assert dry[rows["bad"]]["outcome"] == "failed" and "would refuse" in dry[rows["bad"]]["reason"]
    assert main(["export-mlflow", "--mlflow-database-url", url, "--quicktest", str(rows["good"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["verified"] == 1
    history = platform_db.history(rows["good"])
    assert history["metrics"][EMPTY_NAME] == [7.0, None] and history["params"][EMPTY_NAME] == "p"
    assert history["mlflow"]["tags"][EMPTY_NAME] == "t"
    assert {k: history["params"][k] for k in ("batch_size", "lr", "flag", "layers")} == {
        "batch_size": 2048, "lr": 0.01, "flag": True, "layers": "[128, 64]"}
    assert struct.pack("<d", history["loss"]["loss"][1]) == struct.pack("<d", 0.0)
    assert history["final_metrics"]["test_auc"] == 0.9 and history["metrics"]["test_auc"] == [None, 0.9]
    assert main(["export-mlflow", "--mlflow-database-url", url, "--quicktest", str(rows["good"]), "--verify-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["verified"] == 1
    # MLflow's REST API cannot return an empty name's history: said, not exported in part.
    assert main(["export-mlflow", "--tracking-uri", mlflow_server.url, "--quicktest", str(rows["good"]), "--verify-only", "--json"]) == 1
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert row["outcome"] == "failed" and "empty name" in row["reason"] and "--mlflow-database-url" in row["reason"]
