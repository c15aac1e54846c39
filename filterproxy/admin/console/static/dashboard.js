// The dashboard's trend chart: GET /api/v1/stats for the chosen range, drawn with uPlot
// (queries = every decision, blocked = action "block").
(function () {
  "use strict";
  var box = document.getElementById("trend");
  if (!box || typeof uPlot === "undefined") { return; }
  var plot = null;
  var buttons = document.querySelectorAll(".ranges button[data-range]");

  function message(text) {
    if (plot) { plot.destroy(); plot = null; }
    box.textContent = "";
    var p = document.createElement("p");
    p.className = "muted";
    p.setAttribute("role", "status");
    p.textContent = text;
    box.appendChild(p);
  }

  function width() { return Math.max(240, box.clientWidth); }

  function draw(data) {
    var start = Date.parse(data.from) / 1000, step = data.step;
    var n = 0;
    data.series.forEach(function (s) { n = Math.max(n, s.counts.length); });
    if (n === 0) { n = Math.round((Date.parse(data.to) / 1000 - start) / step); }
    var xs = [], queries = [], blocked = [];
    for (var i = 0; i < n; i++) { xs.push(start + i * step); queries.push(0); blocked.push(0); }
    data.series.forEach(function (s) {
      s.counts.forEach(function (c, i) {
        queries[i] += c;
        if (s.action === "block") { blocked[i] += c; }
      });
    });
    if (plot) { plot.destroy(); plot = null; }
    box.textContent = "";
    var lang = box.getAttribute("data-lang") || "vi";
    var short = step < 86400 && n * step <= 86400;  // one day: hours; longer: days
    var tick = short ? { hour: "2-digit", minute: "2-digit", hour12: false } : { day: "numeric", month: "numeric" };
    var full = { day: "numeric", month: "numeric", hour: "2-digit", minute: "2-digit", hour12: false };
    function fmt(v, opts) { return new Date(v * 1000).toLocaleString(lang, opts); }
    plot = new uPlot({
      width: width(),
      height: 260,
      series: [
        { label: box.getAttribute("data-label-time"), value: function (u, v) { return v == null ? "--" : fmt(v, full); } },
        { label: box.getAttribute("data-label-queries"), stroke: "#0b57d0", width: 2, fill: "rgba(11,87,208,0.08)" },
        { label: box.getAttribute("data-label-blocked"), stroke: "#b3261e", width: 2 }
      ],
      axes: [
        { values: function (u, splits) { return splits.map(function (v) { return fmt(v, tick); }); } },
        { size: 60 }
      ],
      scales: { y: { range: function (u, lo, hi) { return [0, Math.max(1, hi)]; } } }
    }, [xs, queries, blocked], box);
  }

  function load(range, step) {
    var to = Math.ceil(Date.now() / 3600000) * 3600;  // whole hours: the stats store's hour rows answer
    var from = to - range;
    var q = new URLSearchParams({
      from: new Date(from * 1000).toISOString(), to: new Date(to * 1000).toISOString(), step: String(step)
    });
    var group = box.getAttribute("data-group");
    if (group) { q.set("group", group); }
    fetch("/api/v1/stats?" + q.toString(), { credentials: "same-origin" })
      .then(function (resp) {
        if (!resp.ok) { throw new Error(String(resp.status)); }
        return resp.json();
      })
      .then(draw, function () { message(box.getAttribute("data-msg-failed")); });
  }

  function reload() {
    var on = document.querySelector(".ranges button[aria-pressed=true]") || buttons[0];
    load(parseInt(on.getAttribute("data-range"), 10), parseInt(on.getAttribute("data-step"), 10));
  }

  var choice = document.getElementById("trend-group");  // admins: all or one group; teachers: one of theirs
  if (choice) {
    choice.addEventListener("change", function () { box.setAttribute("data-group", choice.value); reload(); });
  }

  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      buttons.forEach(function (o) { o.setAttribute("aria-pressed", o === b ? "true" : "false"); });
      load(parseInt(b.getAttribute("data-range"), 10), parseInt(b.getAttribute("data-step"), 10));
    });
  });
  window.addEventListener("resize", function () { if (plot) { plot.setSize({ width: width(), height: 260 }); } });
  load(86400, 3600);
})();
