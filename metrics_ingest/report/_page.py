"""The report as one self-contained HTML file: tables written here, charts drawn
in the browser by the vendored uPlot (``_assets/``) from data embedded in the page.

Nothing in the page refers outside it: the scripts, the styles and the data
are inlined, and no font is loaded (the system's sans-serif is used).

Example::

    html = render_page([run], title="QuickTest 42")
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
from importlib import resources
from typing import Any

from metrics_ingest.report._charts import build_sections
from metrics_ingest.report._runs import Run

# Tableau 10: distinct on screen and for the common colour-vision deficiencies.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
_STATUS_CLASS = {"completed": "ok", "running": "running", "failed": "failed"}


@functools.cache
def _asset(name: str) -> str:
    return resources.files("metrics_ingest.report").joinpath("_assets", name).read_text("utf-8")


def render_page(runs: list[Run], *, title: str | None = None) -> str:
    """The whole page for ``runs`` (one run, or several compared)."""
    title = title or (runs[0].label if len(runs) == 1 else f"{len(runs)} runs compared")
    sections = build_sections(runs)
    data = {
        "runs": [{"label": run.label, "color": PALETTE[i % len(PALETTE)]} for i, run in enumerate(runs)],
        "sections": sections,
    }
    nav = "".join(
        f'<li><a href="#{s["id"]}">{_e(s["title"])}</a> <span class="count">{len(s["charts"])}</span></li>'
        for s in sections
    )
    tables = _values_table("final-metrics", "Final metrics", runs, "final_metrics")
    tables += _values_table("params", "Parameters", runs, "params")
    nav = f'<li><a href="#runs">Runs</a> <span class="count">{len(runs)}</span></li>{nav}'
    if 'id="final-metrics"' in tables:
        nav += '<li><a href="#final-metrics">Final metrics</a></li>'
    if 'id="params"' in tables:
        nav += '<li><a href="#params">Parameters</a></li>'
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    charts = sum(len(s["charts"]) for s in sections)
    return _asset("page.html").format(
        title=_e(title),
        subtitle=_e(f"{len(runs)} run{'s' * (len(runs) != 1)} · {charts} charts · made {generated} by metrics-ingest report"),
        nav=nav,
        runs=_runs_section(runs),
        tables=tables,
        uplot_css=_asset("uPlot.min.css"),
        report_css=_asset("report.css"),
        uplot_js=_asset("uPlot.iife.min.js"),
        uplot_license=_e(_asset("uPlot.LICENSE")),
        data=_script_json(data),
        report_js=_asset("report.js"),
    )


def _script_json(value: Any) -> str:
    """JSON safe inside <script>: with every '<' escaped (it only occurs in strings), no name in a
    document can close the element or open a comment in it."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _runs_section(runs: list[Run]) -> str:
    cards = []
    for i, run in enumerate(runs):
        doc = run.document
        status = str(doc.get("status", "completed"))
        epochs = doc.get("epochs") or []
        span = f"{len(epochs)} epoch{'s' * (len(epochs) != 1)}" + (f" ({epochs[0]}..{epochs[-1]})" if epochs else "")
        facts = [("status", status), ("epochs", span)]
        for key in ("saved_at", "run_id"):
            if doc.get(key):
                facts.append((key.replace("_", " "), str(doc[key])))
        facts += run.provenance
        for fit in doc.get("fits") or []:
            facts.append(("fit", f"epochs {fit.get('start_epoch')}..{fit.get('end_epoch')} (initial_epoch {fit.get('initial_epoch')})"))
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
        error = f'<pre class="error">{_e(doc["error"])}</pre>' if doc.get("error") else ""
        failures = "".join(
            f'<li>{_e(c.get("callback"))} at epoch {_e(c.get("epoch"))}: {_e(c.get("error"))}</li>'
            for c in doc.get("callback_errors") or []
        )
        if failures:
            failures = f'<p>Callbacks that stopped recording:</p><ul class="error">{failures}</ul>'
        cards.append(
            f'<article class="run" data-run="{i}"><h3><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}">'
            f'</span>{_e(run.label)} <span class="status {_STATUS_CLASS.get(status, "running")}">{_e(status)}</span></h3>'
            f'<table class="facts">{rows}</table>{error}{failures}</article>'
        )
    return "".join(cards)


def _values_table(ident: str, title: str, runs: list[Run], key: str) -> str:
    names = list(dict.fromkeys(name for run in runs for name in (run.document.get(key) or {})))
    if not names:
        return ""
    head = "".join(f"<th>{_e(run.label)}</th>" for run in runs)
    body = []
    for name in names:
        cells = []
        for run in runs:
            values = run.document.get(key) or {}
            if key == "final_metrics" and name in run.final_non_finite:
                cells.append(f'<td class="nonfinite">{run.final_non_finite[name]}</td>')
            elif name not in values:
                cells.append('<td class="absent"></td>')
            else:
                cells.append(f"<td>{_e(_show(values[name]))}</td>")
        body.append(f'<tr data-filter="{_e(name.lower())}"><th>{_e(name)}</th>{"".join(cells)}</tr>')
    return (
        f'<section id="{ident}" class="table-section"><h2>{_e(title)} <span class="count">{len(names)}</span></h2>'
        f'<table class="values"><thead><tr><th>name</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></section>'
    )


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
