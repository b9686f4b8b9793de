"""``metrics-ingest report`` pages in a real headless Chromium, offline: what they plot equals the documents."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from metrics_ingest.cli import main
from tests.support.browser import Browser, OpenedPage
from tests.support.documents import v1_document
from tests.support.report_corpus import expected_charts, write_corpus

# What each chart was given and drew; `undefined` (an epoch the run does not
# have, when runs are compared) is kept apart from null (a gap in the run).
PLOTTED = """() => metricsReport.charts.map(c => ({
  title: c.title, kind: c.kind, visible: !c.element.classList.contains("hidden"),
  labels: c.uplot.series.slice(1).map(s => s.label),
  data: c.uplot.data.map(a => Array.from(a, v => v === undefined ? "undefined" : v)),
  marks: c.drawnMarks || [], cells: c.cells, edges: c.spec.edges, counts: c.spec.counts,
  canvas: c.uplot.ctx.getImageData(0, 0, c.uplot.ctx.canvas.width, c.uplot.ctx.canvas.height).data
          .some((v, i) => i % 4 === 3 && v > 0),
}))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as opened:
        yield opened


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _report(tmp_path: Path, *sources: Path) -> Path:
    out = tmp_path / "report.html"
    assert main(["report", *map(str, sources), "-o", str(out)]) == 0
    return out


def _open(browser: Browser, path: Path) -> OpenedPage:
    page = browser.open(path)
    assert page.requests == [page.url], f"the page asked for more than itself: {page.requests}"
    assert page.console_errors == []
    return page


def _document(source: Path) -> dict[str, Any]:
    file = source if source.is_file() else next(source.rglob("training_metrics.json"))
    return json.loads(file.read_text(), parse_constant=float)


@pytest.mark.parametrize("name", ["failed", "one_epoch", "no_histograms", "mlflow_export"])
def test_page_plots_exactly_the_documents_values(browser: Browser, corpus: dict[str, Path], tmp_path: Path, name: str) -> None:
    """Offline with no console error, the page has one chart per series and one heat map per histogram,
    and each plots the document's values: nulls as gaps, NaN/Infinity tokens as marks, the run's bin edges."""
    doc = _document(corpus[name])
    page = _open(browser, _report(tmp_path, corpus[name]))
    plotted = page.evaluate(PLOTTED)
    expected = expected_charts(doc)
    assert sorted(c["title"] for c in plotted) == sorted(expected)
    histograms = sum("histogram" in s for key in ("weight_stats", "gradient_stats") for s in doc.get(key, {}).values())
    assert sum(c["kind"] == "heatmap" for c in plotted) == histograms
    for chart in plotted:
        want = expected[chart["title"]]
        assert chart["canvas"], f"{chart['title']}: nothing drawn"
        if chart["kind"] == "heatmap":
            assert (chart["edges"], chart["counts"]) == (want["bin_edges"], want["counts"])
            bins = len(want["bin_edges"]) - 1
            assert chart["cells"] == bins * sum(row is not None for row in want["counts"])
            continue
        assert chart["labels"] == list(want["series"]), chart["title"]
        assert chart["data"] == [doc["epochs"], *want["series"].values()], chart["title"]
        drawn = sorted((m["series"], m["epoch"], m["kind"]) for m in chart["marks"])
        assert drawn == sorted((s, doc["epochs"][i], kind) for s, marks in want["marks"].items() for i, kind in marks)
    text = page.page.inner_text("#runs")
    assert doc.get("status", "completed") in text
    if name == "failed":
        assert doc["error"] in text
        assert page.page.inner_text("#final-metrics").count("NaN") == 1
        assert sum(len(c["marks"]) for c in plotted) == 3  # NaN loss, -Infinity accuracy, Infinity norm
    if name == "mlflow_export":
        assert doc["mlflow"]["run_id"] in text and "qt-7-retrieval" in text


def test_comparison_overlays_runs_of_different_lengths(browser: Browser, tmp_path: Path) -> None:
    """Two runs, 8 and 4 epochs: each chart overlays both with a legend; the short run's missing
    epochs are not gaps (undefined), its own nulls still are; each run has its own heat maps."""
    long_doc, short_doc = v1_document(8, seed=4), v1_document(4, seed=5)
    short_doc["loss"]["val_loss"] = [0.5, None, 0.4, None]
    sources = []
    for name, doc in (("long", long_doc), ("short", short_doc)):
        path = tmp_path / name / "training_metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps(doc))
        sources.append(path)
    page = _open(browser, _report(tmp_path, *sources))
    runs = [r["label"] for r in page.evaluate("metricsReport.runs")]
    assert [label.rsplit("/", 1)[-1] for label in runs] == ["long", "short"]
    charts = {c["title"]: c for c in page.evaluate(PLOTTED)}
    loss = charts["loss"]
    assert loss["labels"] == [f"{runs[0]} · loss", f"{runs[0]} · val_loss", f"{runs[1]} · loss", f"{runs[1]} · val_loss"]
    assert loss["data"][0] == list(range(8))
    assert loss["data"][1] == long_doc["loss"]["loss"]
    assert loss["data"][4] == [0.5, None, 0.4, None] + ["undefined"] * 4
    assert page.page.locator(".u-legend").first.inner_text().count(runs[1]) == 2
    heatmaps = [c["title"] for c in charts.values() if c["kind"] == "heatmap"]
    assert len(heatmaps) == 8 and sum(runs[1] in t for t in heatmaps) == 4
    assert page.page.locator("#runs article.run").count() == 2


def test_screenshot_is_not_blank_and_the_filter_narrows_the_charts(browser: Browser, corpus: dict[str, Path], tmp_path: Path) -> None:
    """A screenshot of the page shows drawn charts (many colours, much ink); typing in the filter box
    keeps exactly the charts whose series names match, and hides emptied sections."""
    page = _open(browser, _report(tmp_path, corpus["failed"]))
    page.page.locator("#loss").scroll_into_view_if_needed()
    shot = page.page.screenshot()
    (tmp_path / "report.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height)
    background = max(colours)[0]
    ink = 1 - background / (image.width * image.height)
    assert ink > 0.05 and len(colours) > 50, f"blank-looking screenshot: {ink:.1%} ink, {len(colours)} colours"
    page.page.fill("#filter", "val_")
    visible = [c["title"] for c in page.evaluate(PLOTTED) if c["visible"]]
    assert visible == ["loss"]
    assert page.page.locator("#metrics-factorized-top-k").is_hidden()
    assert "1 of" in page.page.inner_text("#filter-count")


def test_missing_chromium_fails_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no browser anywhere, the browser tests fail (never skip) saying how to install one."""
    from tests.support import browser as support

    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-chrome"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(support, "CANDIDATES", (str(tmp_path / "chromium"),))
    with pytest.raises(pytest.fail.Exception, match=r"no Chromium found: .*apt-get install -y chromium"):
        support.chromium_path()
