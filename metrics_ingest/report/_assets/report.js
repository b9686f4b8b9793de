// metrics-ingest report: draws the charts of the embedded data with uPlot.
// window.metricsReport lists every chart with the data it was given, for tests
// and for anyone poking at the page from the console.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var RUNS = DATA.runs;
  var MULTI = RUNS.length > 1;
  var WIDTH = 370, HEIGHT = 200, VAL_COLOR = "#f28e2b";
  var registry = window.metricsReport = { runs: RUNS, charts: [], ready: false, renderMs: null };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  // x (and flat y) ranges that stay drawable with one epoch or one value.
  function padRange(u, min, max) {
    if (min == null || max == null) return [0, 1];
    return min === max ? [min - 1, max + 1] : [min, max];
  }

  function lineChart(spec, plot, note, entry) {
    var tables = spec.series.map(function (s) { return [s.x, s.y]; });
    // uPlot.join aligns runs of different epochs: a run's missing epochs become
    // `undefined` (the line continues), its own nulls stay null (a gap).
    var data = uPlot.join(tables);
    var series = [{ label: "epoch" }];
    spec.series.forEach(function (s) {
      var run = RUNS[s.run];
      // One run: validation in a second colour too; several: the run's colour, dashed.
      var color = !MULTI && s.val ? VAL_COLOR : run.color;
      series.push({
        label: MULTI ? run.label + " · " + s.name : s.name,
        stroke: color,
        width: 1.5,
        dash: s.val ? [6, 4] : undefined,
        spanGaps: false,
        points: { show: true, size: s.val ? 6 : 4, width: s.val ? 1.5 : 1, stroke: color, fill: s.val ? "#fff" : color },
      });
    });
    var opts = {
      width: WIDTH, height: HEIGHT,
      scales: { x: { time: false, range: padRange } },
      axes: [{ label: "epoch", labelSize: 18, size: 34 }, { size: 56 }],
      series: series,
      legend: { live: true },
      hooks: { draw: [function (u) { entry.drawnMarks = drawMarks(u, spec); }] },
    };
    entry.uplot = new uPlot(opts, data, plot);
    var marked = [], empty = [];
    spec.series.forEach(function (s) {
      if (s.marks.length) marked.push(s.name + " at epoch " + s.marks.map(function (m) { return s.x[m[0]] + " (" + m[1] + ")"; }).join(", "));
      if (s.y.every(function (v) { return v === null; })) empty.push(s.name);
    });
    var text = [];
    if (marked.length) text.push("× non-finite: " + marked.join("; "));
    if (empty.length) text.push("no finite value: " + empty.join(", "));
    note.textContent = text.join(" · ");
  }

  function drawMarks(u, spec) {
    var drawn = [];
    var ctx = u.ctx, dpr = uPlot.pxRatio, r = 4 * dpr;
    spec.series.forEach(function (s) {
      if (!s.marks.length) return;
      ctx.save();
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2 * dpr;
      s.marks.forEach(function (m) {
        var epoch = s.x[m[0]];
        var cx = u.valToPos(epoch, "x", true);
        var cy = m[1] === "-Infinity" ? u.bbox.top + u.bbox.height - r - 2 * dpr : u.bbox.top + r + 2 * dpr;
        ctx.beginPath();
        ctx.moveTo(cx - r, cy - r); ctx.lineTo(cx + r, cy + r);
        ctx.moveTo(cx + r, cy - r); ctx.lineTo(cx - r, cy + r);
        ctx.stroke();
        drawn.push({ series: s.name, run: s.run, epoch: epoch, kind: m[1] });
      });
      ctx.restore();
    });
    return drawn;
  }

  // Viridis, 9 stops: perceptually even, readable in grey and for colour-blind readers.
  var VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                 [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  function viridis(t) {
    var x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    var a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return "rgb(" + Math.round(a[0] + f * (b[0] - a[0])) + "," + Math.round(a[1] + f * (b[1] - a[1])) + "," + Math.round(a[2] + f * (b[2] - a[2])) + ")";
  }

  // Column boundaries: half way between epochs (validation or restarts may skip some).
  function bounds(epochs) {
    var b = [], n = epochs.length;
    var first = n > 1 ? (epochs[1] - epochs[0]) / 2 : 0.5, last = n > 1 ? (epochs[n - 1] - epochs[n - 2]) / 2 : 0.5;
    b.push(epochs[0] - first);
    for (var i = 1; i < n; i++) b.push((epochs[i - 1] + epochs[i]) / 2);
    b.push(epochs[n - 1] + last);
    return b;
  }

  function heatmap(spec, plot, note, entry) {
    var epochs = spec.epochs, edges = spec.edges, counts = spec.counts;
    var xb = bounds(epochs), max = 0;
    counts.forEach(function (row) { if (row) row.forEach(function (c) { if (c > max) max = c; }); });
    var scale = Math.log1p(max) || 1;
    var opts = {
      width: WIDTH, height: HEIGHT,
      legend: { show: false },
      cursor: { points: { show: false }, drag: { x: false, y: false } },
      scales: { x: { time: false, range: [xb[0], xb[xb.length - 1]] }, y: { auto: false, range: [edges[0], edges[edges.length - 1]] } },
      axes: [{ label: "epoch", labelSize: 18, size: 34 }, { size: 56 }],
      series: [{}, { label: "count", stroke: "transparent", points: { show: false }, paths: function () { return null; } }],
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, cells = 0;
          ctx.save();
          ctx.beginPath();
          ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
          ctx.clip();
          for (var i = 0; i < epochs.length; i++) {
            var row = counts[i];
            if (!row) continue;
            var x0 = u.valToPos(xb[i], "x", true), x1 = u.valToPos(xb[i + 1], "x", true);
            for (var j = 0; j < row.length; j++) {
              var y0 = u.valToPos(edges[j], "y", true), y1 = u.valToPos(edges[j + 1], "y", true);
              ctx.fillStyle = viridis(Math.log1p(row[j]) / scale);
              ctx.fillRect(x0, y1, Math.max(1, x1 - x0), Math.max(1, y0 - y1));
              cells++;
            }
          }
          ctx.restore();
          entry.cells = cells;
        }],
        setCursor: [function (u) {
          var i = u.cursor.idx, top = u.cursor.top;
          if (i == null || top == null || top < 0) { note.textContent = legendText; return; }
          var v = u.posToVal(top, "y"), j = 0;
          while (j < edges.length - 2 && v >= edges[j + 1]) j++;
          var row = counts[i];
          note.textContent = "epoch " + epochs[i] + ", bin [" + fmt(edges[j]) + ", " + fmt(edges[j + 1]) + "): " +
            (row ? row[j] : "no histogram at this epoch");
        }],
      },
    };
    var legendText = "colour: log(1 + count), 0 (purple) … " + max + " (yellow); " + (edges.length - 1) + " bins";
    note.textContent = legendText;
    entry.uplot = new uPlot(opts, [epochs.slice(), epochs.map(function () { return null; })], plot);
  }

  function fmt(v) { return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : +v.toFixed(4) + ""; }

  function render() {
    // Built detached and attached once: the page lays out once, not once per chart.
    var placeholder = document.getElementById("charts"), root = el("div");
    root.id = "charts";
    DATA.sections.forEach(function (section) {
      var box = el("section", "chart-section");
      box.id = section.id;
      var h2 = el("h2", null, section.title + " ");
      h2.appendChild(el("span", "count", String(section.charts.length)));
      box.appendChild(h2);
      var grid = el("div", "grid");
      box.appendChild(grid);
      root.appendChild(box);
      section.charts.forEach(function (spec) {
        var card = el("div", "chart " + spec.kind);
        card.dataset.filter = spec.key.toLowerCase();
        card.dataset.chart = spec.id;
        card.appendChild(el("h4", null, spec.title));
        var plot = el("div", "plot"), note = el("div", "note");
        card.appendChild(plot);
        card.appendChild(note);
        grid.appendChild(card);
        var entry = { id: spec.id, section: section.id, kind: spec.kind, title: spec.title, spec: spec, element: card };
        registry.charts.push(entry);
        try {
          (spec.kind === "heatmap" ? heatmap : lineChart)(spec, plot, note, entry);
        } catch (err) {
          note.textContent = "could not draw this chart: " + err;
          console.error("chart " + spec.id + ": " + (err && err.stack || err));
        }
      });
    });
    placeholder.replaceWith(root);
  }

  function filter(text) {
    var words = text.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0, total = 0;
    function match(key) { return words.every(function (w) { return key.indexOf(w) >= 0; }); }
    document.querySelectorAll("[data-filter]").forEach(function (node) {
      var ok = match(node.dataset.filter);
      node.classList.toggle("hidden", !ok);
      if (node.dataset.chart) { total++; if (ok) shown++; }
    });
    document.querySelectorAll(".chart-section, .table-section").forEach(function (section) {
      var visible = section.querySelectorAll("[data-filter]:not(.hidden)").length;
      section.classList.toggle("hidden", visible === 0);
      var link = document.querySelector('#nav a[href="#' + section.id + '"]');
      if (link) {
        link.parentNode.classList.toggle("empty", visible === 0);
        var count = link.parentNode.querySelector(".count");
        if (count) count.textContent = String(visible);
      }
    });
    document.getElementById("filter-count").textContent = words.length ? shown + " of " + total + " charts" : "";
  }

  var started = performance.now();
  render();
  registry.buildMs = performance.now() - started;
  var input = document.getElementById("filter");
  input.addEventListener("input", function () { filter(input.value); });
  // uPlot draws on its next microtask; two frames later everything is on screen.
  requestAnimationFrame(function () {
    requestAnimationFrame(function () {
      registry.renderMs = performance.now();
      registry.ready = true;
    });
  });
})();
