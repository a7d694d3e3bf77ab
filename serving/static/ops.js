// The operator's page: polls /v1/ops/summary and the experiments API every few seconds.
(function () {
  "use strict";

  var EVERY_MS = 3000;
  var SVG = "http://www.w3.org/2000/svg";
  var rates = [];
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function table(node, head, rows) {
    var caption = node.querySelector("caption");
    node.replaceChildren();
    if (caption) node.appendChild(caption);
    var tr = el("tr");
    head.forEach(function (h, i) { tr.appendChild(el("th", {scope: "col", "class": i ? "num" : ""}, h)); });
    node.appendChild(el("thead")).appendChild(tr);
    var body = node.appendChild(el("tbody"));
    rows.forEach(function (r) {
      var row = el("tr");
      r.forEach(function (v, i) { row.appendChild(el("td", {"class": i ? "num" : ""}, v)); });
      body.appendChild(row);
    });
  }

  function fmt(x, digits) {
    return x === null || x === undefined ? "—" : Number(x).toFixed(digits === undefined ? 1 : digits);
  }

  function age(seconds) {
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " days";
  }

  function sparkline(values) {
    var node = $("spark");
    node.replaceChildren();
    if (values.length < 2) return;
    var top = Math.max.apply(null, values.concat([1]));
    var points = values.map(function (v, i) {
      return (i * 240 / (values.length - 1)).toFixed(1) + "," + (38 - v / top * 34).toFixed(1);
    });
    node.appendChild(svg("polyline", {points: points.join(" "), fill: "none",
                                      stroke: "#1a73e8", "stroke-width": 2}));
  }

  function renderEvents(ev) {
    if (ev.error) { $("rate").textContent = "—"; $("applied").textContent = ev.error; return; }
    $("rate").textContent = ev.per_s === null ? "measuring…" : fmt(ev.per_s);
    $("applied").textContent = ev.applied_total.toLocaleString();
    if (ev.per_s !== null) { rates.push(ev.per_s); rates = rates.slice(-60); sparkline(rates); }
    table($("workers"), ["worker", "applied"], Object.keys(ev.workers).sort().map(function (w) {
      return [w, ev.workers[w].toLocaleString()];
    }));
  }

  function renderLag(lag) {
    if (lag.error) { $("lag-total").textContent = "—"; table($("lag"), [lag.error], []); return; }
    $("lag-total").textContent = lag.total.toLocaleString();
    table($("lag"), ["topic / partition", "lag"], lag.partitions.map(function (p) {
      return [p.topic + " / " + p.partition, p.lag.toLocaleString()];
    }));
  }

  function renderDead(dead) {
    var list = $("dlq");
    list.replaceChildren();
    if (dead.error) { $("dlq-count").textContent = "—"; list.appendChild(el("li", {}, dead.error)); return; }
    $("dlq-count").textContent = dead.count.toLocaleString();
    dead.latest.forEach(function (d) {
      var li = el("li", {"class": "deadletter"});
      li.appendChild(el("span", {"class": "bad"}, d.reason));
      li.appendChild(el("span", {"class": "muted"}, " — " + d.topic + "/" + d.partition + "@" +
        d.offset + ", " + new Date(d.failed_at * 1000).toISOString().slice(0, 19) + "Z"));
      list.appendChild(li);
    });
  }

  function renderModel(m) {
    var dl = $("model");
    dl.replaceChildren();
    var add = function (k, v) { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v)); };
    if (!m.version) { add("version", "no model yet (serving popular items)"); return; }
    add("version", m.version);
    add("age", age(m.age_s));
    add("items", m.items.toLocaleString());
  }

  function renderCache(c, r, k) {
    $("hit-rate").textContent = c.hit_rate === null ? "no lookups yet" :
      (c.hit_rate * 100).toFixed(1) + "% hits";
    $("cache-detail").textContent = c.hits.toLocaleString() + " hits, " +
      c.misses.toLocaleString() + " misses (co-occurrence cache of this API process)";
    $("reused").textContent = !r || r.reused_share === null ? "no recommendations yet" :
      (r.reused_share * 100).toFixed(1) + "% of " +
      (r.derived + r.reused + r.last).toLocaleString() +
      " recommendations reused (the customer's state unchanged since their last answer)";
    $("kept-reads").textContent = !k || k.kept_share === null ? "no customer reads yet" :
      (k.kept_share * 100).toFixed(1) + "% of " + (k.kept + k.store).toLocaleString() +
      " customer reads answered from memory (the store tracks their keys and says when they change)";
  }

  function renderLatency(lat) {
    table($("latency"), ["route", "requests", "p50", "p95", "p99"], Object.keys(lat).map(function (r) {
      var x = lat[r];
      return [r, x.count.toLocaleString(), fmt(x.p50_ms, 2), fmt(x.p95_ms, 2), fmt(x.p99_ms, 2)];
    }));
  }

  // ------------------------------------------------------------------ experiments

  function wilson(successes, n) {
    // 95% Wilson score interval of a proportion: sane for small n and for 0 or n successes.
    if (!n) return [0, 0];
    var z = 1.96, p = successes / n, d = 1 + z * z / n;
    var centre = (p + z * z / (2 * n)) / d;
    var half = z * Math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d;
    return [Math.max(0, centre - half), Math.min(1, centre + half)];
  }

  function conversionChart(variants) {
    // Bars: conversion per variant; whiskers: its 95% interval.
    var w = 420, rowH = 26, left = 90, right = 56, h = variants.length * rowH + 24;
    var rows = variants.map(function (v) {
      var conv = v.conversion || 0;
      // The results API's own interval when it has one; Wilson's from the counts if not.
      var own = v.ci95 && v.ci95.conversion;
      var ci = own && own[0] != null && own[1] != null ? [Math.max(0, own[0]), own[1]]
        : wilson(Math.round(conv * (v.users || 0)), v.users || 0);
      return {name: v.variant, conv: conv, ci: ci};
    });
    var top = Math.max.apply(null, rows.map(function (r) { return r.ci[1]; }).concat([0.01]));
    var x = function (p) { return left + p / top * (w - left - right); };
    var chart = svg("svg", {"class": "chart", width: w, height: h, viewBox: "0 0 " + w + " " + h,
                            role: "img", "aria-label": "conversion per variant with 95% intervals"});
    chart.appendChild(svg("line", {"class": "axis", x1: left, x2: left, y1: 0, y2: h - 20}));
    rows.forEach(function (r, i) {
      var y = i * rowH + 4;
      chart.appendChild(svg("text", {x: left - 6, y: y + 14, "text-anchor": "end"}, r.name));
      chart.appendChild(svg("rect", {"class": "bar", x: left, y: y, height: 18,
                                     width: Math.max(1, x(r.conv) - left)}));
      chart.appendChild(svg("line", {"class": "whisker", x1: x(r.ci[0]), x2: x(r.ci[1]),
                                     y1: y + 9, y2: y + 9}));
      [r.ci[0], r.ci[1]].forEach(function (p) {
        chart.appendChild(svg("line", {"class": "whisker", x1: x(p), x2: x(p), y1: y + 4, y2: y + 14}));
      });
      chart.appendChild(svg("text", {x: w - 2, y: y + 14, "text-anchor": "end"},
                            (r.conv * 100).toFixed(1) + "%"));
    });
    chart.appendChild(svg("text", {x: left, y: h - 4}, "0%"));
    chart.appendChild(svg("text", {x: w - right, y: h - 4, "text-anchor": "end"},
                          (top * 100).toFixed(1) + "%"));
    return chart;
  }

  function renderExperiment(box, exp, results) {
    var card = el("article", {"class": "experiment", "data-experiment-id": exp.id});
    card.appendChild(el("h3", {}, exp.id + " (" + exp.status + ")"));
    if (!results || !results.variants || !results.variants.length) {
      card.appendChild(el("p", {"class": "muted"}, "no results yet"));
      box.appendChild(card);
      return;
    }
    card.appendChild(conversionChart(results.variants));
    table(card.appendChild(el("table")), ["variant", "users", "exposures", "CTR", "conversion",
                                          "rev/user", "lift 95% CI"],
      results.variants.map(function (v) {
        var ci = v.lift && v.lift.ci95;
        return [v.variant, String(v.users), String(v.exposures), fmt((v.ctr || 0) * 100) + "%",
                fmt((v.conversion || 0) * 100, 2) + "%", fmt(v.revenue_per_user, 2),
                ci ? "[" + fmt(ci[0] * 100) + "%, " + fmt(ci[1] * 100) + "%]" : "—"];
      }));
    if (results.srm && results.srm.ok === false) {
      card.appendChild(el("p", {"class": "bad"}, results.srm.warning ||
                          "sample ratio mismatch: check the assignment"));
    }
    box.appendChild(card);
  }

  function loadExperiments() {
    var box = $("experiments");
    return fetch("/v1/experiments").then(function (res) {
      if (res.status === 404) return {experiments: []};
      if (!res.ok) throw new Error("experiments: HTTP " + res.status);
      return res.json();
    }).then(function (body) {
      var active = (body.experiments || []).filter(function (e) {
        return e.status !== "stopped" && e.status !== "archived";
      });
      if (!active.length) {
        box.replaceChildren(el("p", {"class": "muted", id: "no-experiments"}, "no experiments"));
        return;
      }
      return Promise.all(active.map(function (e) {
        return fetch("/v1/experiments/" + encodeURIComponent(e.id) + "/results")
          .then(function (r) { return r.ok ? r.json() : null; }, function () { return null; });
      })).then(function (results) {
        box.replaceChildren();
        active.forEach(function (e, i) { renderExperiment(box, e, results[i]); });
      });
    }).catch(function (err) {
      box.replaceChildren(el("p", {"class": "bad"}, String(err.message)));
    });
  }

  function load() {
    return fetch("/v1/ops/summary").then(function (res) {
      if (!res.ok) throw new Error("summary: HTTP " + res.status);
      return res.json();
    }).then(function (s) {
      renderEvents(s.events);
      renderLag(s.lag);
      renderDead(s.deadletters);
      renderModel(s.model);
      renderCache(s.cache, s.recommendations, s.customer_reads);
      renderLatency(s.latency);
      $("updated").textContent = new Date(s.served_at * 1000).toISOString().slice(11, 19) + "Z";
      $("error").textContent = "";
      document.body.setAttribute("data-loaded", "true");
    }).catch(function (err) {
      $("error").textContent = String(err.message);
    });
  }

  function loop() {
    Promise.all([load(), loadExperiments()]).then(function () { setTimeout(loop, EVERY_MS); });
  }
  loop();
})();
