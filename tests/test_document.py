"""Parsing, validation against the one schema, and normalization of training_metrics.json."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ingest import document
from ingest.errors import Rejected
from tests.support.documents import appendix_document, dumps, megabyte_document, v1_document


def test_schema_file_is_valid_draft_2020_12() -> None:
    """The machine-readable format definition is itself a valid JSON Schema 2020-12."""
    Draft202012Validator.check_schema(document.schema())
    assert document.schema()["$schema"].endswith("2020-12/schema")


def test_v1_document_round_trips() -> None:
    """A complete schema_version 1 file is accepted and kept as is."""
    doc = v1_document(5)
    assert document.load_document(dumps(doc)) == doc


def test_appendix_document_is_filled_in() -> None:
    """A file in the plan's appendix format gains schema_version 1, status completed and metrics {}."""
    doc = appendix_document(4)
    out = document.load_document(dumps(doc, indent=2))
    assert (out["schema_version"], out["status"], out["metrics"]) == (1, "completed", {})
    assert out["loss"] == doc["loss"] and out["weight_stats"] == doc["weight_stats"]
    minimal = document.load_document(b'{"epochs": []}')
    assert set(minimal) >= {"loss", "metrics", "gradient", "weight_stats", "gradient_stats", "final_metrics", "params"}


def test_non_finite_values_become_null() -> None:
    """NaN / Infinity tokens and overflowing numbers (1e999) are stored as null."""
    raw = (
        b'{"epochs": [0, 1, 2], "loss": {"loss": [NaN, Infinity, -Infinity]},'
        b' "metrics": {"lr": [1e999, 0.5, null]},'
        b' "weight_stats": {"query": {"mean": [NaN, 1, 2], "histogram": {"bin_edges": [0, 1], "counts": [[1], null, [2]]}}},'
        b' "final_metrics": {"test_loss": NaN}, "params": {"clip": Infinity},'
        b' "timing": {"epoch_seconds": [0.5, NaN, 1e999]}}'
    )
    out = document.load_document(raw)
    assert out["timing"]["epoch_seconds"] == [0.5, None, None]
    assert out["loss"]["loss"] == [None, None, None]
    assert out["metrics"]["lr"] == [None, 0.5, None]
    assert out["weight_stats"]["query"]["mean"] == [None, 1, 2]
    assert out["final_metrics"]["test_loss"] is None and out["params"]["clip"] is None
    json.dumps(out, allow_nan=False)  # strict JSON, storable as jsonb


def _bad(doc: dict[str, Any]) -> bytes:
    return dumps(doc)


BROKEN: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty"),
    ("whitespace", b"  \n", "empty"),
    ("not-json", b"epochs: [1, 2]", "not JSON"),
    ("truncated", dumps(v1_document(3))[:-40], "ends early"),
    ("top-level-array", b"[1, 2, 3]", "top-level value is an array"),
    ("top-level-string", b'"hello"', "top-level value is a string"),
    ("no-epochs", b'{"loss": {}}', "'epochs' is a required property"),
    ("epochs-strings", b'{"epochs": ["a"]}', "at $.epochs[0]: expected integer, got a string"),
    ("series-string", _bad({**v1_document(2), "loss": {"loss": [0.1, "x"]}}), "at $.loss.loss[1]: expected number or null"),
    ("loss-not-map", _bad({**v1_document(2), "loss": [0.1, 0.2]}), "at $.loss: expected object, got an array"),
    ("param-object", _bad({**v1_document(2), "params": {"opt": {"name": "adam"}}}), "at $.params.opt"),
    ("bad-status", _bad({**v1_document(2), "status": "done"}), "at $.status"),
    ("bad-version", _bad({**v1_document(2), "schema_version": 2}), "at $.schema_version"),
    ("short-series", _bad({**v1_document(3), "loss": {"val_loss": [0.1, 0.2]}}), "loss.val_loss has 2 values for 3 epochs"),
    ("short-timing", _bad({**v1_document(3), "timing": {"epoch_seconds": [1.5]}}), "timing.epoch_seconds has 1 values for 3 epochs"),
    (
        "short-tower-stat",
        _bad({**v1_document(3), "weight_stats": {"query": {"mean": [1.0]}}}),
        "weight_stats.query.mean has 1 values for 3 epochs",
    ),
    (
        "counts-row-bins",
        _bad(
            {**v1_document(2), "gradient_stats": {"q": {"histogram": {"bin_edges": [0, 1, 2], "counts": [[1, 2], [3]]}}}}
        ),
        "gradient_stats.q.histogram.counts[1] has 1 bins but bin_edges defines 2",
    ),
    (
        "counts-rows-epochs",
        _bad({**v1_document(3), "weight_stats": {"q": {"histogram": {"bin_edges": [0, 1], "counts": [[1]]}}}}),
        "weight_stats.q.histogram.counts has 1 values for 3 epochs",
    ),
    (
        "negative-count",
        _bad({**v1_document(1), "weight_stats": {"q": {"histogram": {"bin_edges": [0, 1], "counts": [[-1]]}}}}),
        "at $.weight_stats.q.histogram.counts[0][0]",
    ),
    ("epochs-repeat", b'{"epochs": [0, 1, 1, 2]}', "epochs must strictly increase: epochs[2] = 1 follows 1"),
    ("epochs-decrease", b'{"epochs": [3, 2]}', "epochs must strictly increase"),
    ("invalid-utf8", b'{"epochs": [], "params": {"name": "caf\xe9"}}', "not valid UTF-8 (byte 38"),
    ("deep-nesting", b'{"epochs": [], "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than 64 levels"),
    ("huge-integer", b'{"epochs": [' + b"9" * 5000 + b"]}", "at $.epochs[0]: an integer of 5000 digits (at most 4300)"),
    (
        "huge-int-bin-edge",
        _bad({**v1_document(1), "weight_stats": {"q": {"histogram": {"bin_edges": [0, 10**400], "counts": [[1]]}}}}),
        "weight_stats.q.histogram.bin_edges must be finite numbers",
    ),
    # Defect 9: what PostgreSQL cannot store is named, with its place, before the database is asked.
    ("nul-in-name", b'{"epochs": [0], "loss": {"a\\u0000b": [1]}}', "at $.loss: the name 'a\\x00b' holds a NUL character"),
    ("surrogate-in-name", b'{"epochs": [0], "loss": {"a\\ud800": [1]}}', "at $.loss: the name 'a\\ud800' holds a lone UTF-16 surrogate"),
    ("nul-in-path", b'{"epochs": [0], "metrics": {"m\\u0000": ["x"]}}', "at $.metrics: the name 'm\\x00' holds a NUL"),
    ("nul-in-value", b'{"epochs": [], "params": {"opt": "adam\\u0000"}}', "at $.params.opt: the string 'adam\\x00' holds a NUL"),
    ("surrogate-in-value", b'{"epochs": [], "saved_at": "\\udc00x"}', "at $.saved_at: the string '\\udc00x' holds a lone UTF-16"),
    ("huge-int-in-params", b'{"epochs": [], "params": {"seed": ' + b"7" * 4400 + b"}}", "at $.params.seed: an integer of 4400 digits"),
    # Defect 10: the schema's bounds (epochs within bigint and spelled as integers, error, unknown keys).
    ("epoch-float", b'{"epochs": [0.0, 1.0]}', "at $.epochs[0]: expected an integer written without a fraction, got 0.0"),
    ("epoch-beyond-int64", b'{"epochs": [9223372036854775808]}', "at $.epochs[0]: 9223372036854775808 is greater than the maximum"),
    ("error-too-long", dumps({"epochs": [], "status": "failed", "error": "e" * 65537}), "at $.error: longer than 65536 characters"),
    ("unknown-value-too-big", dumps({"epochs": [], "notes": ["n" * 1000] * 70}), "at $.notes: an unknown top-level value of more than 65,536 bytes"),
    ("unknown-string-too-long", dumps({"epochs": [], "notes": "n" * 70000}), "at $.notes: longer than 65536 characters"),
    ("too-many-top-level-keys", dumps({"epochs": [], **{f"k{i}": 1 for i in range(40)}}), "at $: more than 32 keys"),
    ("long-name", b'{"epochs": [0], "loss": {"' + b"n" * 256 + b'": [1, 2]}}', "loss.nnnn"),
]


@pytest.mark.parametrize(("case", "raw", "fragment"), BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_files_are_rejected_with_a_reason(case: str, raw: bytes, fragment: str) -> None:
    """Each broken or hostile file is rejected with a reason naming the problem."""
    with pytest.raises(Rejected) as caught:
        document.load_document(raw)
    assert fragment in caught.value.reason, caught.value.reason
    assert len(caught.value.reason) <= 300
    # Storable as PostgreSQL text and writable as UTF-8, whatever the file holds.
    assert "\x00" not in caught.value.reason and caught.value.reason.encode("utf-8")


def test_depth_guard_allows_ordinary_nesting_and_brackets_in_strings() -> None:
    """Nesting up to the limit passes; brackets inside strings do not count; open depth is returned."""
    assert document.check_depth("[" * 64 + "]" * 64) == 0
    with pytest.raises(Rejected):
        document.check_depth("[" * 65 + "]" * 65)
    assert document.check_depth('{"k": "' + "[" * 1000 + '\\"[[["}') == 0
    assert document.check_depth('{"k": [1, {"j": "]]"') == 3


@pytest.mark.parametrize(
    "hostile",
    ['{"a": "' + '\\"' * 300_000, '"\\' * 300_000, '"' * 600_000, "[" * 2_000_000 + "]" * 2_000_000],
    ids=["escaped-quotes-unterminated", "trailing-backslashes", "quotes", "deep"],
)
def test_pre_parse_scan_is_linear_on_hostile_text(hostile: str) -> None:
    """Inputs that make a naive string-skipping regex quadratic are scanned and rejected in linear time."""
    import time

    started = time.perf_counter()
    with pytest.raises(Rejected):
        document.load_document(hostile.encode())
    assert time.perf_counter() - started < 5.0  # quadratic would take minutes


def test_compiled_validator_agrees_with_plain_jsonschema_on_the_benchmark_file() -> None:
    """The compiled validator accepts and rejects the benchmark file's variants exactly as plain jsonschema does."""
    plain = Draft202012Validator(document.schema())
    good = megabyte_document()
    assert plain.is_valid(good)
    document.validate(good)
    for bad_value in (True, "1", [1], {"a": 1}):
        doc = v1_document(3)
        doc["metrics"]["factorized_top_k/top_0_categorical_accuracy"][1] = bad_value
        assert not plain.is_valid(doc)
        with pytest.raises(Rejected, match=r"\$\.metrics\.factorized_top_k/top_0_categorical_accuracy\[1\]"):
            document.validate(doc)
    doc = v1_document(2)
    doc["weight_stats"]["query"]["histogram"]["counts"][0][0] = 3.0  # JSON Schema: 3.0 is an integer
    assert plain.is_valid(doc)
    document.validate(doc)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("weight_stats", "query", "mean", 1), "x"),
        (("gradient_stats", "candidate", "norm"), None),
        (("weight_stats", "query", "histogram", "bin_edges"), [0.5]),
        (("weight_stats", "query", "histogram", "counts", 0), None),
        (("weight_stats", "query", "histogram", "counts", 1), "row"),
        (("weight_stats", "query", "histogram", "counts", 1, 0), -1),
        (("available",), "yes"),
        (("available",), False),
        (("epochs", 0), 0.5),
        (("saved_at",), "x" * 65),
    ],
)
def test_compiled_validator_agrees_with_reference_jsonschema(path: tuple, value: object) -> None:
    """jsonschema-rs judges each edited document as the reference Python jsonschema does, and the reason names the same first place."""
    from ingest.document import _validator

    doc = v1_document(3)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    plain = [list(e.absolute_path) for e in Draft202012Validator(document.schema()).iter_errors(doc)]
    compiled = [list(e.instance_path) for e in _validator().iter_errors(doc)]
    assert bool(compiled) == bool(plain)
    assert compiled[:1] == plain[:1]
    if plain:
        with pytest.raises(Rejected) as caught:
            document.validate(doc)
        assert caught.value.reason.startswith(f"at {document._path(plain[0])}:"), caught.value.reason


def test_overflowing_numbers_are_judged_as_the_numbers_they_are_written_as() -> None:
    """1e999 parses as infinity (which the compiled validator sees as null): where the schema wants a number it is still one, then the format's own rules apply."""
    out = document.load_document(b'{"epochs": [0], "params": {"lr": 1e999}, "loss": {"loss": [-1e999]}}')
    assert out["params"]["lr"] is None and out["loss"]["loss"] == [None]
    for raw, fragment in (
        (b'{"epochs": [1e999]}', "at $.epochs[0]: expected integer, got a number"),
        (
            b'{"epochs": [0], "weight_stats": {"q": {"histogram": {"bin_edges": [0, 1e999], "counts": [[1]]}}}}',
            "weight_stats.q.histogram.bin_edges must be finite numbers",
        ),
        (b'{"epochs": [0], "loss": {"loss": ["x"]}, "metrics": {"m": [1e999]}}', "at $.loss.loss[0]: expected number or null"),
    ):
        with pytest.raises(Rejected, match=re.escape(fragment)):
            document.load_document(raw)


def test_value_count_limit_rejects_before_parsing() -> None:
    """A dense file of more values than the schema's x-maxValues is rejected, cheaply and with a reason, before it is parsed."""
    import time
    import tracemalloc

    limit = document.max_values()
    raw = b'{"epochs": [], "junk": [' + b"1," * limit + b"1]}"
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(Rejected, match=r"about 4,000,00\d values .* at most 4,000,000 are accepted"):
        document.load_document(raw)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 6 * len(raw)  # no parse: a parsed list of 4M ints alone would take ~32 MB more
    assert elapsed < 10
    fits = b'{"epochs": [0], "loss": {"loss": [1]}, "notes": [' + b"1," * 1000 + b"1]}"
    assert document.load_document(fits)["notes"] == [1] * 1001


def test_prepare_keeps_the_file_text_when_only_top_level_keys_are_added() -> None:
    """The file's own text is stored (plus the missing top-level keys) unless a value had to change."""
    raw = dumps(appendix_document(2), indent=2)
    prepared = document.prepare(raw)
    assert prepared.text == raw.decode()
    assert prepared.added == {"schema_version": 1, "status": "completed", "metrics": {}}
    assert {**json.loads(prepared.text), **prepared.added} == prepared.document
    for changed in (b'{"epochs": [0], "loss": {"loss": [NaN]}}', b'{"epochs": [0], "loss": {"loss": [1e999]}}'):
        assert document.prepare(changed).text is None
    # Literals PostgreSQL's numeric refuses (over 16,383 digits after the point): the parsed values are stored.
    for exotic in (b'{"epochs": [0], "loss": {"loss": [1e-20000]}}', b'{"epochs": [0], "loss": {"loss": [0.' + b"0" * 20000 + b'1]}}'):
        assert document.prepare(exotic).text is None
    assert document.prepare(b'{"epochs": [0], "loss": {"loss": [1e-05]}}').text is not None


def test_random_edits_get_the_same_verdict_from_both_validators() -> None:
    """400 random edits of a complete document: the compiled validator and the reference Python jsonschema agree on every one, and a rejection names a path."""
    import random

    rng = random.Random(12)
    plain = Draft202012Validator(document.schema())
    compiled = document._validator()
    values = [None, True, 0, -1, 3.0, 0.5, 2**63, "x", "", "n" * 300, [], [1], [None, 2.5], {}, {"a": 1}, {"": 1}]
    for _ in range(400):
        doc = v1_document(2, bins=2)
        target: Any = doc
        for _depth in range(rng.randrange(1, 5)):  # walk down to a random container
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            if not keys:
                break
            key = rng.choice(keys)
            if not isinstance(target[key], (dict, list)) or rng.random() < 0.3:
                break
            target = target[key]
        if isinstance(target, dict) and (rng.random() < 0.3 or not target):
            target[rng.choice(["new", "", "x" * 257, "mean", "histogram"])] = rng.choice(values)
        elif target:
            key = rng.choice(list(target) if isinstance(target, dict) else list(range(len(target))))
            target[key] = rng.choice(values)
        verdict = plain.is_valid(doc)
        assert compiled.is_valid(doc) == verdict, doc
        if not verdict:
            with pytest.raises(Rejected, match=r"^at \$"):
                document.validate(doc)


def test_exported_mlflow_facts_are_bounded_by_mlflow_limits_not_the_unknown_value_cap() -> None:
    """The `mlflow` key of an exported history is a defined key: tags up to MLflow's own 8,000 characters each
    pass however many there are (past the 64 KiB cap for unknown keys), a longer tag or an extra key is refused."""
    doc = v1_document(epochs=2)
    doc["mlflow"] = {
        "run_id": "0" * 32, "experiment_id": "1", "run_name": "old-run", "status": "FINISHED",
        "start_time": "2025-01-01T00:00:00.000Z", "end_time": None,
        "tags": {f"mlflow.tag{i}": "x" * 8000 for i in range(20)},
    }
    assert len(json.dumps(doc["mlflow"])) > 65536
    assert document.load_document(dumps(doc))["mlflow"]["run_id"] == "0" * 32

    doc["mlflow"]["tags"]["too.long"] = "x" * 8001
    with pytest.raises(Rejected, match=r"\$\.mlflow\.tags"):
        document.load_document(dumps(doc))
    del doc["mlflow"]["tags"]["too.long"]
    doc["mlflow"]["surprise"] = 1
    with pytest.raises(Rejected, match=r"\$\.mlflow"):
        document.load_document(dumps(doc))
