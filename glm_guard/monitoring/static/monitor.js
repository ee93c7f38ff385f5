// glm_guard monitor page: fetches the JSON endpoints with the bearer token and draws SVG charts.
// No library and nothing from another origin. The token comes from the form or the URL fragment
// (#token=...), which browsers never send to a server; it is kept in this tab's sessionStorage.
"use strict";
(function () {
  const API = document.body.dataset.api || ".";  // relative to the page: works where the app is mounted
  const REFRESH_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = { ok: "#2e7d32", warn: "#ef6c00", bad: "#c62828", blue: "#1565c0", violet: "#6a1b9a" };
  const $ = (id) => document.getElementById(id);
  let token = "";
  let timer = null;

  // -- the token and the window: fragment first (then removed from the address bar), else this tab's storage
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (fragment.has("token")) token = fragment.get("token");
  else token = sessionStorage.getItem("glm_guard_monitor_token") || "";
  const fromFragment = fragment.get("window");
  const savedWindow = fromFragment || sessionStorage.getItem("glm_guard_monitor_window");
  if (savedWindow && [...$("window").options].some((o) => o.value === savedWindow)) $("window").value = savedWindow;
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  $("token").value = token;
  $("api-path").textContent = API + "/";

  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("glm_guard_monitor_token", token);
    sessionStorage.setItem("glm_guard_monitor_window", $("window").value);
    refresh();
  });
  $("window").addEventListener("change", () => $("controls").requestSubmit());

  // -- formatting: the test reads these back, so keep them plain
  const count = (n) => (n === null || n === undefined ? "–" : String(n));
  const pct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(2) + "%");
  const secs = (x) => (x === null || x === undefined ? "–" : x.toFixed(3) + " s");
  const perHour = (x) => (x === null || x === undefined ? "–" : x.toFixed(1));
  const hhmm = (t) => new Date(t * 1000).toISOString().slice(11, 16);
  const axisPct = (x) => (x * 100).toFixed(0) + "%";
  const axisSecs = (x) => (x >= 1 ? +x.toFixed(1) + " s" : (x >= 0.01 ? Math.round(x * 1000) : +(x * 1000).toFixed(1)) + " ms");
  const hitRate = (hits, misses) => (hits + misses ? hits / (hits + misses) : null);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function get(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(API + path, { headers, cache: "no-store", credentials: "omit" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = (body.error && body.error.message) || "HTTP " + response.status;
      throw Object.assign(new Error(message), { status: response.status });
    }
    return body;
  }

  // -- one chart: stacked bars and/or lines over the window's minutes, with an optional limit line
  function chart(title, first, n, series, opts) {
    const W = 360, H = 140, L = 46, R = 8, T = 8, B = 18;
    const x = (i) => L + ((i + 0.5) * (W - L - R)) / n;
    const bars = series.filter((s) => s.bar);
    const stacked = Array.from({ length: n }, (_, i) => bars.reduce((a, s) => a + (s.values[i] || 0), 0));
    const lineValues = series.filter((s) => !s.bar).flatMap((s) => s.values.filter((v) => v !== null));
    let top = Math.max(1e-9, ...stacked, ...lineValues, opts.limit ?? 0);
    top = opts.max ?? (top <= 1 && opts.unit === "s" ? top * 1.1 : Math.ceil(top * 1.1));
    const bottom = opts.min ?? 0;
    const y = (v) => T + (H - T - B) * (1 - (Math.min(v, top) - bottom) / (top - bottom || 1));
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#d0d5dd" }));
    const label = opts.format || ((v) => String(Math.round(v * 100) / 100));
    root.append(svg("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, label(top)));
    root.append(svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, label(bottom)));
    root.append(svg("text", { x: L, y: H - 4 }, hhmm(first)));
    root.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, hhmm(first + (n - 1) * 60)));
    const width = Math.max(1, ((W - L - R) / n) * 0.8);
    const base = new Array(n).fill(0);
    for (const s of bars) {
      s.values.forEach((v, i) => {
        if (!v) return;
        const y0 = y(base[i]), y1 = y(base[i] + v);
        root.append(svg("rect", { x: x(i) - width / 2, y: y1, width, height: Math.max(0.5, y0 - y1), fill: s.color }));
        base[i] += v;
      });
    }
    for (const s of series.filter((s) => !s.bar)) {
      let points = [];
      const flush = () => {
        if (points.length === 1) root.append(svg("circle", { cx: points[0][0], cy: points[0][1], r: 2, fill: s.color }));
        else if (points.length) root.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: s.color, "stroke-width": 1.5 }));
        points = [];
      };
      s.values.forEach((v, i) => (v === null ? flush() : points.push([x(i).toFixed(1), y(v).toFixed(1)])));
      flush();
    }
    if (opts.limit !== undefined && opts.limit !== null) {
      const ly = y(opts.limit);
      root.append(svg("line", { x1: L, y1: ly, x2: W - R, y2: ly, stroke: COLORS.bad, "stroke-dasharray": "4 3" }));
      root.append(svg("text", { x: W - R, y: ly - 3, "text-anchor": "end" }, opts.limitLabel));
    }
    const legend = el("div", { class: "legend" });
    for (const s of series) {
      const swatch = el("i");
      swatch.style.background = s.color;
      legend.append(el("span", {}, swatch, s.name));
    }
    return el("figure", { "data-chart": opts.id }, el("figcaption", {}, title), legend, root);
  }

  // -- one key: its figures (since start, and over the window) and its charts
  function figuresRow(scope, key, block, rows) {
    const tr = el("tr", {}, el("th", {}, scope === "total" ? "since start" : "last " + $("window").selectedOptions[0].text));
    for (const [name, text] of rows(block)) tr.append(el("td", { "data-scope": scope, "data-figure": name }, text));
    return tr;
  }

  const COLUMNS = [
    ["calls", "calls"], ["success_rate", "success rate"], ["errors_1302", "1302s"],
    ["errors_1302_per_hour", "1302s / hour"], ["fallbacks", "fallbacks"], ["failures", "failures"],
    ["wait_p50", "wait p50"], ["wait_p99", "wait p99"], ["cache_hit_rate", "cache hit rate"], ["limit", "limit"],
  ];

  function figures(b) {
    return [
      ["calls", count(b.calls)],
      ["success_rate", pct(b.success_rate)],
      ["errors_1302", count(b.errors_1302)],
      ["errors_1302_per_hour", b.errors_1302_per_hour === undefined ? "" : perHour(b.errors_1302_per_hour)],
      ["fallbacks", count(b.fallbacks)],
      ["failures", count(b.failures)],
      ["wait_p50", secs(b.waits.p50)],
      ["wait_p99", secs(b.waits.p99)],
      ["cache_hit_rate", pct(b.cache.hit_rate)],
      ["limit", b.learned_limit !== null ? "learned " + b.learned_limit : b.concurrency_limit !== null ? "fixed " + b.concurrency_limit : "none"],
    ];
  }

  function keySection(key, total, windowed, series, thresholds) {
    const section = el("section", { class: "key", "data-key": key });
    section.append(el("h2", {}, key));
    const head = el("tr", {}, el("th", {}, ""));
    for (const [, title] of COLUMNS) head.append(el("th", {}, title));
    const table = el("table", { class: "figures" }, head);
    if (total) table.append(figuresRow("total", key, total, figures));
    if (windowed) table.append(figuresRow("window", key, windowed, figures));
    section.append(table);
    if (series) {
      const m = series.minutes, n = m.calls.length, first = series.first;
      const limit = series.limit;
      const charts = el("div", { class: "charts" });
      charts.append(
        chart("Calls per minute", first, n, [
          { name: "success", values: m.successes, color: COLORS.ok, bar: true },
          { name: "fallback", values: m.fallbacks, color: COLORS.warn, bar: true },
          { name: "failure", values: m.failures, color: COLORS.bad, bar: true },
        ], { id: "calls" }),
        chart("1302s in the last hour", first, n, [{ name: "1302s / hour", values: m.errors_1302_last_hour, color: COLORS.bad }],
          { id: "errors_1302", limit: thresholds.errors_1302_per_hour, limitLabel: "alert above " + thresholds.errors_1302_per_hour }),
        chart("Success rate", first, n, [{ name: "success rate", values: m.success_rate, color: COLORS.ok }], {
          id: "success_rate", max: 1, min: Math.min(0.9, ...m.success_rate.filter((v) => v !== null)),
          limit: thresholds.min_success_rate, limitLabel: "alert below " + pct(thresholds.min_success_rate), format: axisPct,
        }),
        chart("Wait for a permit", first, n, [
          { name: "p50", values: m.wait_p50, color: COLORS.blue },
          { name: "p99", values: m.wait_p99, color: COLORS.violet },
        ], { id: "wait", unit: "s", format: axisSecs }),
        chart("Calls in flight (mean per minute)", first, n, [{ name: "in flight", values: m.in_flight, color: COLORS.blue }], {
          id: "in_flight", limit: limit ? limit.value : null,
          limitLabel: limit ? ({ learned: "learned limit ", fixed: "limit " }[limit.kind] || "default limit ") + limit.value : "",
        }),
        chart("Cache hit rate", first, n, [{ name: "hit rate", values: m.cache_hits.map((h, i) => hitRate(h, m.cache_misses[i])), color: COLORS.violet }],
          { id: "cache", max: 1, format: axisPct }),
        chart("Fallbacks per minute", first, n, [{ name: "fallbacks", values: m.fallbacks, color: COLORS.warn, bar: true }], { id: "fallbacks" }),
      );
      section.append(charts);
    }
    return section;
  }

  function clear(message, isError) {
    $("keys").replaceChildren();
    $("alerts").replaceChildren();
    $("status").textContent = message;
    $("status").className = isError ? "error" : "";
  }

  async function refresh() {
    clearTimeout(timer);
    const minutes = $("window").value;
    try {
      const [stats, windowed, series] = await Promise.all([
        get("/stats"),
        get("/rate-limit-stats?window_minutes=" + minutes),
        get("/series?window_minutes=" + minutes),
      ]);
      const keys = [...new Set([...Object.keys(stats.keys), ...Object.keys(windowed.keys), ...Object.keys(series.keys)])].sort();
      const sections = keys.map((key) => {
        const s = series.keys[key];
        const columns = s && { minutes: s.minutes, limit: s.limit, first: series.first_minute };
        return keySection(key, stats.keys[key], windowed.keys[key], columns, series.thresholds);
      });
      $("keys").replaceChildren(...sections);
      $("alerts").replaceChildren(...windowed.alerts.map((a) =>
        el("li", { "data-alert": a.alert }, `ALERT ${a.alert} on ${a.key}: ${Math.round(a.value * 1000) / 1000} (threshold ${a.threshold})`)));
      const shared = stats.shared_error ? ` (shared store unreachable: ${stats.shared_error}; this process only)` : "";
      $("status").textContent = `source: ${stats.source}${shared} · ${keys.length} key(s) · updated ${stats.generated_at}`;
      $("status").className = "";
      document.body.dataset.updated = stats.generated_at;
    } catch (error) {
      clear(error.status === 401 ? "a valid bearer token is required: enter it above" : "cannot load the numbers: " + error.message, true);
      document.body.dataset.updated = "error";
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
})();
