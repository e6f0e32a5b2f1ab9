/*
 * runner serve: the browser side of the read-only dashboard.
 *
 * Routes (by location.pathname, links intercepted with history.pushState):
 *   /                    the first experiment's page, or an empty-state message
 *   /experiments/NAME    trials table, compare charts for ticked trials, the experiment's charts
 *   /trials/ID           one trial: summary, error text, metric charts, configuration
 * Data comes from the JSON API under /api/; /api/version is polled every 2 s and the current
 * page is fetched again (in place: sort order, ticked boxes and scroll kept) when it changes.
 * Charts are inline SVG drawn by renderChart(). Every text from the store is put in the DOM
 * with textContent or setAttribute, never parsed as HTML.
 * body[data-ready] is "0" while a page (or a compare chart) loads and "1" once it is drawn.
 */
"use strict";
(function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const POLL_MS = 2000;
  const STATUSES = ["done", "running", "pending", "failed", "interrupted"];
  const KIND_ORDER = ["curves", "depth", "shortcut", "preact"];
  const MARKER_KINDS = ["depth", "shortcut", "preact"];   // charts drawn with a dot at every point

  const state = {
    version: null,        // last version seen (from /api/experiments or /api/version)
    experiments: [],      // last /api/experiments list
    seq: 0,               // page generation: bumped on navigation, stale answers are dropped
    view: null,           // what #content holds: "empty" | "experiment:NAME" | "trial:ID"
    expName: null,        // experiment shown on an experiment page
    trials: [],           // its trials, in grid order
    columns: [],
    sorts: {},            // experiment name -> {key, dir}
    checked: {},          // experiment name -> Set of ticked trial ids
    compareKey: null,     // ids of the compare chart drawn or loading ("" when none)
    compareSeq: 0,
    compareWaiting: false, // a tick set data-ready to "0": the next compare drawn sets it back
    updatedAt: null,
  };

  /* ---------- DOM helpers ---------- */

  function build(node, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (typeof v === "function") node.addEventListener(k.replace(/^on/, ""), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid == null || kid === false) continue;
      node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return node;
  }
  const el = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const svgEl = (tag, attrs, ...kids) => build(document.createElementNS(SVGNS, tag), attrs, kids);
  const $ = (sel) => document.querySelector(sel);
  const setReady = (v) => { document.body.dataset.ready = v; };

  /* ---------- formatting ---------- */

  const DASH = "—";
  const pad2 = (n) => String(n).padStart(2, "0");
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const trimNum = (v, digits) => String(parseFloat(v.toFixed(digits)));

  function fmtPct(v) { return isNum(v) ? (v * 100).toFixed(2) : DASH; }
  function fmtCompact(v) {
    if (!isNum(v)) return DASH;
    const a = Math.abs(v);
    if (a >= 1e6) return trimNum(v / 1e6, 2) + "M";
    if (a >= 1e3) return trimNum(v / 1e3, 1) + "k";
    return trimNum(v, 4);
  }
  function fmtParams(v) {
    if (!isNum(v)) return DASH;
    return v >= 1e7 ? (v / 1e6).toFixed(1) + "M" : (v / 1e6).toFixed(2) + "M";
  }
  function fmtDuration(s) {
    if (!isNum(s)) return DASH;
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    const m = Math.round(s / 60);
    if (m < 60) return m + " min";
    const h = Math.floor(m / 60);
    if (h < 24) return h + " h " + pad2(m % 60) + " min";
    return Math.floor(h / 24) + " d " + pad2(h % 24) + " h";
  }
  function fmtDate(iso) {
    if (!iso) return DASH;
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
      pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }
  function fmtClock(d) { return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds()); }
  function fmtScalar(v) { return v == null ? DASH : typeof v === "object" ? JSON.stringify(v) : String(v); }
  function countsText(status, total) {
    const parts = STATUSES.filter((s) => status && status[s] > 0).map((s) => status[s] + " " + s);
    return parts.length ? parts.join(" · ") : total ? total + " trials" : "no trials";
  }
  function statusPill(s, text) {
    const known = STATUSES.includes(s) ? s : "other";
    return el("span", { class: "status status-" + known }, text == null ? String(s) : text);
  }

  /* ---------- API ---------- */

  async function api(path) {
    let res;
    try {
      res = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (e) {
      throw new Error("store unreachable (" + path + ")");
    }
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      const msg = body && typeof body.error === "string" ? body.error : "HTTP " + res.status;
      const err = new Error(msg);
      err.status = res.status;
      throw err;
    }
    return body;
  }
  const settle = (p) => p.then((value) => ({ value }), (error) => ({ error }));
  const expUrl = (name) => "/experiments/" + encodeURIComponent(name);
  const expApi = (name, what) => "/api/experiments/" + encodeURIComponent(name) + "/" + what;

  /* ---------- banner and live indicator ---------- */

  function showError(msg) { $("#error").textContent = msg; $("#error").hidden = false; }
  function clearError() { $("#error").hidden = true; $("#error").textContent = ""; }
  function setLive(ok) {
    const live = $("#live");
    if (!ok) {
      live.textContent = "store unreachable";
      live.className = "live live-down";
      return;
    }
    live.textContent = state.updatedAt ? "updated " + fmtClock(state.updatedAt) : "live";
    live.className = "live live-ok";
  }

  /* ---------- routing ---------- */

  function parseRoute(path) {
    let m = /^\/experiments\/(.+?)\/?$/.exec(path);
    if (m) {
      try { return { kind: "experiment", name: decodeURIComponent(m[1]) }; }
      catch (e) { return { kind: "experiment", name: m[1] }; }
    }
    m = /^\/trials\/([^/]+)\/?$/.exec(path);
    if (m) return { kind: "trial", id: m[1] };
    return { kind: "home" };
  }

  function navigate(url, push) {
    if (push) history.pushState(null, "", url);
    state.seq++;
    clearError();
    loadPage(true).then(() => { if (push) window.scrollTo(0, 0); });
  }

  function onLinkClick(ev) {
    if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    const a = ev.target.closest && ev.target.closest("a[href]");
    if (!a || a.target || a.hasAttribute("download")) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin) return;
    if (!/^\/($|experiments\/|trials\/)/.test(url.pathname)) return;
    ev.preventDefault();
    if (url.pathname + url.search === location.pathname + location.search) return;
    navigate(url.pathname + url.search, true);
  }

  /* ---------- page loading ---------- */

  // initial: a navigation (clears the page, data-ready 0 -> 1); otherwise a live refresh.
  async function loadPage(initial) {
    const seq = state.seq;
    const route = parseRoute(location.pathname);
    if (initial) setReady("0");
    try {
      const list = await api("/api/experiments");
      if (seq !== state.seq) return;
      if (!initial) clearError();
      applyExperimentList(list);
      let name = route.name;
      if (route.kind === "home") {
        name = list.experiments && list.experiments.length ? list.experiments[0].name : null;
        if (name == null) { renderEmpty(); return; }
      }
      if (route.kind === "trial") await loadTrialPage(route.id, seq);
      else await loadExperimentPage(name, seq, initial);
    } catch (e) {
      if (seq === state.seq) showError(e.message);
    } finally {
      if (initial && seq === state.seq) setReady("1");
    }
  }

  function applyExperimentList(list) {
    state.experiments = Array.isArray(list.experiments) ? list.experiments : [];
    if (list.version != null) state.version = list.version;
    $("#store").textContent = list.store == null ? "" : String(list.store);
    renderNav();
  }

  function currentExperimentName() {
    const route = parseRoute(location.pathname);
    if (route.kind === "experiment") return route.name;
    if (route.kind === "trial") return state.trialExperiment || null;
    return state.experiments.length ? state.experiments[0].name : null;
  }

  function renderNav() {
    const nav = $("#experiments");
    const keepScroll = nav.scrollTop;
    const current = currentExperimentName();
    const items = state.experiments.map((e) => el("li",
      { "data-experiment": e.name, class: e.name === current ? "current" : null },
      el("a", { href: expUrl(e.name), "aria-current": e.name === current ? "page" : null },
        el("span", { class: "exp-name" }, e.name),
        el("span", { class: "exp-counts" }, countsText(e.status, e.trials)))));
    nav.replaceChildren(el("h2", null, "Experiments"),
      items.length ? el("ul", null, items) : el("p", { class: "muted" }, "none yet"));
    nav.scrollTop = keepScroll;
  }

  function renderEmpty() {
    state.view = "empty";
    document.title = "runner";
    $("#content").replaceChildren(el("div", { class: "empty" },
      "No experiments yet: ", el("code", null, "runner run experiments/quick.toml")));
  }

  // Replaces #content's children in one step and keeps the window's scroll position.
  function swapContent(...nodes) {
    const x = window.scrollX, y = window.scrollY;
    $("#content").replaceChildren(...nodes);
    window.scrollTo(x, y);
  }

  /* ---------- experiment page ---------- */

  async function loadExperimentPage(name, seq, initial) {
    const [trials, charts] = await Promise.all([
      settle(api(expApi(name, "trials"))), settle(api(expApi(name, "charts")))]);
    if (seq !== state.seq) return;
    if (trials.error) throw trials.error;
    const fresh = state.view !== "experiment:" + name || !$("#experiment");
    if (fresh) buildExperimentSkeleton(name);
    state.trials = Array.isArray(trials.value.trials) ? trials.value.trials : [];
    fillExperimentHead(name);
    fillTable();
    if (charts.error) showError("charts: " + charts.error.message);
    else fillCharts($("#charts .charts-body"), charts.value);
    await updateCompare(fresh ? "load" : "refresh");
  }

  function buildExperimentSkeleton(name) {
    state.view = "experiment:" + name;
    state.expName = name;
    state.compareKey = null;
    state.compareSeq++;
    state.compareWaiting = false;
    document.title = name + " · runner";
    if (!state.checked[name]) state.checked[name] = new Set();
    if (!state.sorts[name]) state.sorts[name] = { key: null, dir: 1 };
    const table = el("table", { id: "trials" }, el("thead"), el("tbody"));
    table.addEventListener("click", onTableClick);
    const clear = el("button", { type: "button", class: "clear", hidden: true, onclick: clearCompare }, "clear");
    swapContent(el("div", { id: "experiment", "data-experiment": name },
      el("header", { class: "page-head" }),
      el("div", { class: "table-wrap card" }, table),
      el("section", { id: "compare", class: "card" },
        el("div", { class: "section-head" }, el("h2", null, "Compare"), clear),
        el("div", { class: "compare-body" })),
      el("section", { id: "charts", class: "card" },
        el("div", { class: "section-head" }, el("h2", null, "Charts")),
        el("div", { class: "charts-body" }))));
    window.scrollTo(0, 0);
  }

  function fillExperimentHead(name) {
    const info = state.experiments.find((e) => e.name === name) || {};
    const status = info.status || {};
    const pills = STATUSES.filter((s) => status[s] > 0).map((s) => statusPill(s, status[s] + " " + s));
    $("#experiment .page-head").replaceChildren(
      el("h1", null, name),
      el("div", { class: "meta" },
        el("span", null, "created " + fmtDate(info.created_at)),
        el("span", null, (info.trials != null ? info.trials : state.trials.length) + " trials"),
        el("span", { class: "pills" }, pills)));
  }

  /* ---------- trials table ---------- */

  function unionKeys(trials, field) {
    const keys = [];
    for (const t of trials) for (const k of Object.keys(t[field] || {})) if (!keys.includes(k)) keys.push(k);
    return keys;
  }

  function scalarColumn(key, title, get, trials, fullTitle) {
    const num = trials.every((t) => get(t) == null || typeof get(t) === "number");
    return { key, title, full: fullTitle, num, value: get, cell: (t) => fmtScalar(get(t)) };
  }

  function trialColumns(trials) {
    const arch = unionKeys(trials, "arch_params").map((k) =>
      scalarColumn("arch:" + k, k, (t) => (t.arch_params || {})[k], trials));
    const settings = unionKeys(trials, "settings").map((k) =>
      scalarColumn("set:" + k, k.replace(/^train\./, ""), (t) => (t.settings || {})[k], trials, k));
    const statusRank = (t) => { const i = STATUSES.indexOf(t.status); return i < 0 ? 99 : i; };
    return [
      { key: "compare", title: "", cell: checkboxCell, nosort: true },
      { key: "trial", title: "#", num: true, value: (t) => t.trial,
        cell: (t) => el("a", { href: "/trials/" + encodeURIComponent(t.trial) }, String(t.trial)) },
      { key: "label", title: "label", value: (t) => t.label, cell: (t) => fmtScalar(t.label) },
      ...arch, ...settings,
      { key: "seed", title: "seed", num: true, value: (t) => t.seed, cell: (t) => fmtScalar(t.seed) },
      { key: "status", title: "status", value: statusRank, cell: (t) => statusPill(t.status) },
      { key: "progress", title: "progress", value: progressValue, cell: progressCell },
      { key: "best_val_error", title: "best val (%)", num: true, value: (t) => t.best_val_error,
        cell: (t) => fmtPct(t.best_val_error) },
      { key: "test_error", title: "test (%)", num: true, value: (t) => t.test_error, cell: (t) => fmtPct(t.test_error) },
      { key: "images_per_s", title: "img/s", num: true, value: (t) => t.images_per_s,
        cell: (t) => (isNum(t.images_per_s) ? t.images_per_s.toFixed(0) : DASH) },
      { key: "eta_s", title: "ETA", num: true, value: (t) => (t.status === "running" ? t.eta_s : null),
        cell: (t) => (t.status === "running" ? fmtDuration(t.eta_s) : "") },
      { key: "params", title: "params", num: true, value: (t) => t.params, cell: (t) => fmtParams(t.params) },
      { key: "error", title: "error", cls: "error", value: (t) => t.error, cell: errorCell },
    ];
  }

  function progressValue(t) {
    if (!isNum(t.steps)) return null;
    return isNum(t.total_steps) && t.total_steps > 0 ? t.steps / t.total_steps : t.steps;
  }

  function progressCell(t) {
    if (!isNum(t.steps)) return DASH;
    const total = isNum(t.total_steps) ? t.total_steps : null;
    const text = fmtCompact(t.steps) + (total != null ? " / " + fmtCompact(total) : "");
    const frac = total ? Math.min(1, Math.max(0, t.steps / total)) : null;
    const fill = el("span", { class: "bar-fill status-bg-" + (STATUSES.includes(t.status) ? t.status : "other") });
    fill.style.width = ((frac || 0) * 100).toFixed(1) + "%";
    return el("div", { class: "progress", title: t.steps + (total != null ? " / " + total + " steps" : " steps") },
      el("span", { class: "progress-text" }, text),
      frac == null ? null : el("span", { class: "bar" }, fill));
  }

  function errorCell(t) {
    if (t.error == null || t.error === "") return "";
    const text = String(t.error);
    return el("span", { class: "error-text", title: text }, text.split("\n")[0]);
  }

  function checkboxCell(t) {
    // Both events, on the box itself: a click dispatched without bubbling still counts.
    const box = el("input", { type: "checkbox", class: "compare", "data-trial": t.trial,
      "aria-label": "compare trial " + t.trial, onclick: syncChecks, onchange: syncChecks });
    box.checked = checkedSet().has(Number(t.trial));
    return box;
  }

  function checkedSet() {
    const name = state.expName;
    if (!state.checked[name]) state.checked[name] = new Set();
    return state.checked[name];
  }

  function compareValues(a, b) {
    if (a == null && b == null) return 0;
    if (a == null) return 1;   // blanks last in both directions (see sortedTrials)
    if (b == null) return -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function sortedTrials() {
    const sort = state.sorts[state.expName] || { key: null, dir: 1 };
    const col = state.columns.find((c) => c.key === sort.key);
    const rows = state.trials.map((t, i) => ({ t, i }));
    if (!col) return rows.map((r) => r.t);
    rows.sort((x, y) => {
      const a = col.value(x.t), b = col.value(y.t);
      if (a == null || b == null) return compareValues(a, b) || x.i - y.i;
      return sort.dir * compareValues(a, b) || x.i - y.i;
    });
    return rows.map((r) => r.t);
  }

  function fillTable() {
    const trials = state.trials;
    // Ticks of trials that no longer exist are dropped.
    const ids = new Set(trials.map((t) => Number(t.trial)));
    for (const id of [...checkedSet()]) if (!ids.has(id)) checkedSet().delete(id);
    state.columns = trialColumns(trials);
    const sort = state.sorts[state.expName];
    if (sort.key && !state.columns.some((c) => c.key === sort.key)) sort.key = null;
    const head = state.columns.map((c) => el("th", {
      "data-key": c.key, class: [c.num ? "num" : "", c.nosort ? "" : "sortable", c.cls || ""].join(" ").trim() || null,
      title: c.full || null,
      "aria-sort": sort.key === c.key ? (sort.dir > 0 ? "ascending" : "descending") : null },
    c.title, sort.key === c.key ? el("span", { class: "arrow" }, sort.dir > 0 ? " ▲" : " ▼") : null));
    const table = $("#trials");
    table.tHead.replaceChildren(el("tr", null, head));
    const rows = sortedTrials().map((t) => el("tr", {
      class: "trial", "data-trial": t.trial, "data-status": t.status },
    state.columns.map((c) => el("td", { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null }, c.cell(t)))));
    if (!rows.length) {
      rows.push(el("tr", { class: "none" }, el("td", { colspan: state.columns.length, class: "muted" }, "No trials.")));
    }
    table.tBodies[0].replaceChildren(...rows);
  }

  // A click on a header sorts by its column; a second click reverses.
  function onTableClick(ev) {
    const th = ev.target.closest("th.sortable");
    if (!th) return;
    const sort = state.sorts[state.expName];
    const key = th.getAttribute("data-key");
    if (sort.key === key) sort.dir = -sort.dir;
    else { sort.key = key; sort.dir = 1; }
    fillTable();
  }

  // Reads the ticked boxes (the DOM is the truth) and redraws the compare chart if they changed.
  function syncChecks() {
    const set = checkedSet();
    set.clear();
    for (const box of document.querySelectorAll("#trials input.compare")) {
      const id = Number(box.getAttribute("data-trial"));
      if (box.checked && Number.isFinite(id)) set.add(id);
    }
    updateCompare("tick");
  }

  function clearCompare() {
    checkedSet().clear();
    for (const box of document.querySelectorAll("#trials input.compare")) box.checked = false;
    updateCompare("tick");
  }

  /* ---------- compare section ---------- */

  // why: "load" (page built), "refresh" (live update: fetch again, swap when ready), "tick".
  async function updateCompare(why) {
    const ids = [...checkedSet()].sort((a, b) => a - b);
    const key = ids.join(",");
    if (why === "tick" && key === state.compareKey) return;
    state.compareKey = key;
    const seq = ++state.compareSeq;
    const body = $("#compare .compare-body");
    const clear = $("#compare button.clear");
    if (!body) return;
    clear.hidden = ids.length === 0;
    if (!ids.length) {
      delete document.body.dataset.compare;
      body.replaceChildren(el("p", { class: "hint" }, "Tick trials to compare their curves"));
      compareDone();
      return;
    }
    if (why !== "refresh") {
      body.replaceChildren(el("p", { class: "muted" }, "Loading trials " + ids.join(", ") + "…"));
      if (why === "tick") { state.compareWaiting = true; setReady("0"); }
    }
    try {
      const data = await api("/api/compare?trials=" + key);
      if (seq !== state.compareSeq) return;
      fillCharts(body, data, "Trials " + ids.join(", "));
      document.body.dataset.compare = key;
    } catch (e) {
      if (seq !== state.compareSeq) return;
      showError("compare: " + e.message);
      if (why !== "refresh") body.replaceChildren(el("p", { class: "muted" }, "No comparison: " + e.message));
    } finally {
      if (seq === state.compareSeq) compareDone();
    }
  }

  function compareDone() {
    if (state.compareWaiting) setReady("1");
    state.compareWaiting = false;
  }

  /* ---------- chart lists ---------- */

  const drawnCharts = new WeakMap();   // figure.chart-card -> { chart, cols } it was drawn with

  function fillCharts(container, data, caption) {
    const charts = (data && Array.isArray(data.charts) ? data.charts : []).slice();
    const rank = (c) => { const i = KIND_ORDER.indexOf(c.kind); return i < 0 ? KIND_ORDER.length : i; };
    charts.sort((a, b) => rank(a) - rank(b));
    const skipped = data && Array.isArray(data.skipped) ? data.skipped : [];
    const nodes = [];
    if (caption) nodes.push(el("p", { class: "caption" }, caption));
    const avail = chartArea(container);
    const cards = charts.map((c) => chartCard(c, avail));
    if (cards.length) nodes.push(el("div", { class: "chart-grid" }, cards));
    else if (!skipped.length) nodes.push(el("p", { class: "muted" }, "No charts yet."));
    if (skipped.length) nodes.push(el("ul", { class: "skipped" }, skipped.map((s) => el("li", null, String(s)))));
    container.replaceChildren(...nodes);
  }

  // The width (CSS px) the charts get in container: measured when it is in the page, else guessed.
  function chartArea(container) {
    const w = container && container.isConnected ? container.clientWidth : 0;
    if (w > 0) return w;
    return Math.max(320, window.innerWidth - (window.innerWidth > 800 ? 220 : 0) - 60);
  }

  // Panels side by side: as many as fit at a readable size (about 400 px each), in balanced rows.
  function panelCols(n, avail) {
    if (n <= 1) return 1;
    const fit = Math.max(1, Math.floor((avail + 12) / 400));
    const rows = Math.ceil(n / Math.min(n, fit));
    return Math.ceil(n / rows);
  }

  function chartCard(chart, avail) {
    const cols = panelCols((chart.panels || []).length, avail);
    const fig = el("figure", { class: "chart-card" + (cols > 1 ? " wide" : "") }, renderChart(chart, cols));
    drawnCharts.set(fig, { chart, cols });
    return fig;
  }

  // After a resize, a chart of several panels is drawn again when a different number fits in a row.
  function relayoutCharts() {
    for (const grid of document.querySelectorAll(".chart-grid")) {
      const avail = grid.clientWidth;
      if (!avail) continue;
      for (const fig of grid.children) {
        const drawn = drawnCharts.get(fig);
        if (!drawn) continue;
        const cols = panelCols((drawn.chart.panels || []).length, avail);
        if (cols === drawn.cols) continue;
        fig.classList.toggle("wide", cols > 1);
        fig.replaceChildren(renderChart(drawn.chart, cols));
        drawnCharts.set(fig, { chart: drawn.chart, cols });
      }
    }
  }

  /* ---------- SVG charts ---------- */

  // Sizes in the SVG's units: a panel is PANEL_W wide, its plot PLOT_H high; the margins around
  // the plot follow from the texts (measured), so that no title, label or legend is cut.
  const PANEL_W = 460, PLOT_H = 230;
  const EDGE = 8;                    // kept free of text at a panel's sides
  const LEGEND_ROW = 16;
  const FONT = { title: "600 13px", panel: "600 12px", small: "11px" };   // as style.css sets them
  const LINE_H = { title: 17, panel: 15, small: 14 };

  let measurer = null, fontFamily = null;

  // The width of text in font ("600 13px" and the page's family): measured on a canvas when there is one.
  function textWidth(text, font) {
    text = String(text);
    if (measurer === null) {
      try { measurer = document.createElement("canvas").getContext("2d") || false; } catch (e) { measurer = false; }
      fontFamily = getComputedStyle(document.body).fontFamily || "sans-serif";
    }
    const size = parseFloat(/([\d.]+)px/.exec(font)[1]);
    if (!measurer) return text.length * size * (font.startsWith("600") ? 0.64 : 0.6);
    measurer.font = font + " " + fontFamily;
    return measurer.measureText(text).width * 1.03 + 1;
  }

  // The longest n such that text.slice(0, n) + suffix fits in maxW (at least 1 when text has any).
  function fitLength(text, font, maxW, suffix) {
    let lo = Math.min(1, text.length), hi = text.length;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (textWidth(text.slice(0, mid).trimEnd() + suffix, font) <= maxW) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  // text, or its start and an ellipsis when it is wider than maxW.
  function fitText(text, font, maxW) {
    text = String(text == null ? "" : text);
    if (textWidth(text, font) <= maxW) return text;
    return text.slice(0, fitLength(text, font, maxW, "…")).trimEnd() + "…";
  }

  // text in lines of at most maxW, broken at spaces (a word wider than a line is broken inside);
  // at most maxLines, the last one cut with an ellipsis when there is more.
  function wrapText(text, font, maxW, maxLines) {
    const words = String(text == null ? "" : text).split(/\s+/).filter(Boolean);
    const lines = [];
    let cur = "";
    for (let i = 0; i < words.length && lines.length < maxLines; i++) {
      const next = cur ? cur + " " + words[i] : words[i];
      if (textWidth(next, font) <= maxW) { cur = next; continue; }
      if (cur) lines.push(cur);
      cur = words[i];
      while (lines.length < maxLines && textWidth(cur, font) > maxW) {
        const n = fitLength(cur, font, maxW, "");
        lines.push(cur.slice(0, n));
        cur = cur.slice(n);
      }
      if (lines.length >= maxLines) {
        // The rest goes on the last line, cut.
        const rest = [lines.pop(), cur, ...words.slice(i + 1)].filter(Boolean).join(" ");
        lines.push(fitText(rest, font, maxW));
        return lines;
      }
    }
    if (cur) lines.push(cur);
    return lines;
  }

  // The centre of a text w wide: as near to cx as keeps the text within [lo, hi].
  function clampCentre(cx, w, lo, hi) {
    if (w >= hi - lo) return (lo + hi) / 2;
    return Math.min(Math.max(cx, lo + w / 2), hi - w / 2);
  }

  // A text element of several lines (tspans), each centred (anchor "middle") or left-aligned.
  function multiline(cls, lines, x, y, lineH, font, centre) {
    const text = svgEl("text", { class: cls, "text-anchor": centre ? "middle" : null });
    lines.forEach((s, i) => {
      const lx = centre ? clampCentre(x, textWidth(s, font), centre[0], centre[1]) : x;
      text.append(svgEl("tspan", { x: lx.toFixed(1), y: y + i * lineH }, s));
    });
    return text;
  }

  // The step (1, 2 or 5 times a power of ten) that gives about count intervals over range.
  function niceStep(range, count) {
    const raw = range / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    return parseFloat(((f < Math.SQRT2 ? 1 : f < Math.sqrt(10) ? 2 : f < Math.sqrt(50) ? 5 : 10) * mag).toPrecision(12));
  }

  // Ticks at a nice step (1, 2 or 5 times a power of ten; on an integer axis at least 1); the
  // domain is rounded out to ticks unless exact (then the ticks inside it).
  function niceScale(lo, hi, count, exact, integer) {
    if (!isNum(lo) || !isNum(hi)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) {
      if (integer) { lo -= 1; hi += 1; }
      else if (hi === 0) hi = 1;
      else { const d = Math.abs(hi) * 0.1; lo -= d; hi += d; }
    }
    let step = niceStep(hi - lo, count);
    if (integer) step = Math.max(1, step);
    const i0 = Math.floor(lo / step + 1e-9), i1 = Math.ceil(hi / step - 1e-9);
    const ticks = [];
    for (let i = i0; i <= i1; i++) ticks.push(parseFloat((i * step).toPrecision(12)));
    if (!exact) return { min: ticks[0], max: ticks[ticks.length - 1], ticks, step };
    const eps = (hi - lo) * 1e-9;
    return { min: lo, max: hi, ticks: ticks.filter((v) => v >= lo - eps && v <= hi + eps), step };
  }

  // A tick's text, with as many decimals as its step needs (so that no two ticks read the same).
  function fmtTick(v, step) {
    const dec = (s) => (s > 0 ? Math.max(0, Math.min(8, Math.ceil(-Math.log10(s) - 1e-9))) : 0);
    // 2.5k for a step of 500, but 1202 (not 1.202k) for a tick at each depth.
    const a = Math.abs(v);
    if (a >= 1e6 && step >= 1e5) return trimNum(v / 1e6, dec(step / 1e6)) + "M";
    if (a >= 1e3 && step >= 100) return trimNum(v / 1e3, dec(step / 1e3)) + "k";
    return trimNum(v, dec(step));
  }

  function safeColor(c) {
    return typeof c === "string" && /^(#[0-9a-fA-F]{3,8}|[a-zA-Z]{3,20}|rgba?\([0-9., %]+\))$/.test(c) ? c : "#888888";
  }

  const finitePoint = (p) => Array.isArray(p) && isNum(p[0]) && isNum(p[1]);

  // The x and y scales shared by every panel of a chart.
  function chartScales(chart) {
    const xs = [], ys = [];
    for (const panel of chart.panels || []) {
      for (const line of panel.lines || []) {
        for (const p of line.points || []) if (finitePoint(p)) { xs.push(p[0]); ys.push(p[1]); }
        for (const b of line.band || []) {
          if (!Array.isArray(b) || !isNum(b[0])) continue;
          xs.push(b[0]);
          if (isNum(b[1])) ys.push(b[1]);
          if (isNum(b[2])) ys.push(b[2]);
        }
      }
    }
    const cats = Array.isArray(chart.categories) ? chart.categories : null;
    let x;
    if (cats) {
      x = { min: -0.5, max: Math.max(cats.length, 1) - 0.5, ticks: cats.map((_, i) => i), labels: cats, step: 1 };
    } else {
      let lo = xs.length ? Math.min(...xs) : 0, hi = xs.length ? Math.max(...xs) : 1;
      // Iterations, steps, depths: whole numbers, so whole ticks only.
      const integer = xs.length > 0 && xs.every(Number.isInteger);
      const markers = MARKER_KINDS.includes(chart.kind);
      const distinct = [...new Set(xs)].sort((a, b) => a - b);
      if (markers && integer && distinct.length <= 8) {
        // A few depths (say 20, 32, 44, 56, 110): a tick at each of them and none between.
        const pad = distinct.length === 1 ? 1 : Math.max(0.5, (hi - lo) * 0.05);
        x = { min: lo - pad, max: hi + pad, ticks: distinct, step: 1 };
      } else {
        if (markers && hi > lo) { const pad = (hi - lo) * 0.04; lo -= pad; hi += pad; }
        else if (lo > 0 && lo <= (hi - lo) * 0.25) lo = 0;
        x = niceScale(lo, hi, 6, true, integer);
      }
    }
    const y = niceScale(Math.min(0, ys.length ? Math.min(...ys) : 0), ys.length ? Math.max(...ys) : 1, 5);
    return { x, y };
  }

  // One entry per label + colour, in order of appearance; drawn bold when one of its lines is
  // (the style key tells dashed from bold), as a dot when all its lines are single points.
  function legendEntries(panel) {
    const seen = new Map();
    for (const line of panel.lines || []) {
      const k = line.label + "\u0000" + line.color;
      const dot = (line.points || []).filter(finitePoint).length === 1;
      const e = seen.get(k);
      if (!e) {
        seen.set(k, { label: String(line.label == null ? "" : line.label), color: safeColor(line.color),
          style: line.style, dot });
      } else {
        if (e.style === "thin" && line.style !== "thin") e.style = line.style;
        e.dot = e.dot && dot;
      }
    }
    return [...seen.values()];
  }

  // Entries left to right, on as many rows as width needs; a label too long for a row is cut.
  function layoutLegend(entries, width) {
    let x = 0, row = 0;
    const placed = entries.map((e) => {
      const text = fitText(e.label.length > 60 ? e.label.slice(0, 59) + "…" : e.label, FONT.small, width - 27);
      const w = 27 + textWidth(text, FONT.small) + 14;
      if (x > 0 && x + w > width) { x = 0; row++; }
      const p = { ...e, text, x, row };
      x += w;
      return p;
    });
    return { placed, rows: entries.length ? row + 1 : 0 };
  }

  // Margins, wrapped texts and legends shared by a chart's panels.
  function chartLayout(chart, panels, scales) {
    const yTicks = scales.y.ticks.map((v) => fmtTick(v, scales.y.step));
    const tickW = Math.max(0, ...yTicks.map((s) => textWidth(s, FONT.small)));
    const l = Math.max(56, Math.ceil(tickW) + 30), r = 16;
    const plotW = PANEL_W - l - r;
    const titles = panels.map((p) => wrapText(p.title || "", FONT.panel, PANEL_W - 2 * EDGE, 3));
    const titleRows = Math.max(...titles.map((t) => t.length));
    const t = titleRows ? 14 + (titleRows - 1) * LINE_H.panel + 12 : 12;
    // Category names wrapped (two lines at most) to the width of their slot.
    const sx = scales.x;
    const slot = Math.max(24, plotW / Math.max(1, sx.ticks.length) - 6);
    const cats = sx.labels ? sx.ticks.map((_, i) => {
      const lines = wrapText(sx.labels[i] == null ? "" : sx.labels[i], FONT.small, slot, 2);
      return lines.length ? lines : [""];
    }) : null;
    const tickH = cats ? (Math.max(1, ...cats.map((c) => c.length)) - 1) * LINE_H.small : 0;
    const xLabel = wrapText(chart.x_label || "", FONT.small, PANEL_W - 2 * EDGE, 3);
    const b = tickH + (xLabel.length ? 34 + (xLabel.length - 1) * LINE_H.small + 10 : 28);
    const legends = panels.map((p) => layoutLegend(legendEntries(p), PANEL_W - EDGE - l));
    const legendH = Math.max(...legends.map((g) => g.rows)) * LEGEND_ROW;
    const yLabel = chart.y_label || "";
    return { l, r, t, b, plotW, yTicks, cats, tickH, titles, xLabel, legends, yLabel,
      yLabelText: fitText(yLabel, FONT.small, PLOT_H), h: t + PLOT_H + b + legendH + 6 };
  }

  // cols: panels side by side (the others go on further rows).
  function renderChart(chart, cols) {
    const panels = chart.panels && chart.panels.length ? chart.panels : [{ title: "", lines: [] }];
    cols = Math.max(1, Math.min(cols || panels.length, panels.length));
    const rows = Math.ceil(panels.length / cols);
    const width = PANEL_W * cols;
    const scales = chartScales(chart);
    const lay = chartLayout(chart, panels, scales);
    // The title, wrapped to the width; the style key on its last line when there is room, else below.
    const titleLines = wrapText(chart.title || "", FONT.title, width - 20, 3);
    const key = hasBothStyles(chart) ? styleKey() : null;
    let keyLine = Math.max(0, titleLines.length - 1);
    if (key && titleLines.length &&
      textWidth(titleLines[keyLine], FONT.title) + 24 + key.w > width - 20) keyLine = titleLines.length;
    const titleRows = Math.max(titleLines.length, key ? keyLine + 1 : 0);
    const top = titleRows ? 17 + (titleRows - 1) * LINE_H.title + 9 : 8;
    const height = top + rows * lay.h;
    const svg = svgEl("svg", { class: "chart", "data-kind": chart.kind || "", viewBox: "0 0 " + width + " " + height,
      preserveAspectRatio: "xMidYMid meet", role: "img", "aria-label": chart.title || "chart" },
    multiline("chart-title", titleLines, 10, 17, LINE_H.title, FONT.title, null));
    if (key) {
      key.g.setAttribute("transform", "translate(" + (width - 10 - key.w).toFixed(1) + "," + (17 + keyLine * LINE_H.title - 4) + ")");
      svg.append(key.g);
    }
    panels.forEach((p, i) => svg.append(renderPanel(chart, p, i, scales, lay,
      (i % cols) * PANEL_W, top + Math.floor(i / cols) * lay.h, i % cols === 0)));
    return svg;
  }

  function hasBothStyles(chart) {
    const styles = new Set();
    for (const p of chart.panels || []) for (const l of p.lines || []) styles.add(l.style);
    return chart.kind === "curves" && styles.has("thin") && styles.has("bold");
  }

  // Figure 6's convention, once per curves chart: dashed = training, bold = validation.
  function styleKey() {
    const thin = "training", bold = "validation";
    const x2 = 27 + textWidth(thin, FONT.small) + 16;
    const g = svgEl("g", { class: "style-key" },
      svgEl("line", { x1: 0, x2: 22, y1: 0, y2: 0, "stroke-width": 1, "stroke-dasharray": "4 3" }),
      svgEl("text", { x: 27, y: 4 }, thin),
      svgEl("line", { x1: x2, x2: x2 + 22, y1: 0, y2: 0, "stroke-width": 2.5 }),
      svgEl("text", { x: x2 + 27, y: 4 }, bold));
    return { g, w: x2 + 27 + textWidth(bold, FONT.small) };
  }

  function renderPanel(chart, panel, index, scales, lay, left, top, first) {
    const plotW = lay.plotW;
    const sx = scales.x, sy = scales.y;
    const X = (v) => lay.l + ((v - sx.min) / (sx.max - sx.min)) * plotW;
    const Y = (v) => lay.t + PLOT_H - ((v - sy.min) / (sy.max - sy.min)) * PLOT_H;
    const g = svgEl("g", { class: "panel", transform: "translate(" + left + "," + top + ")" });
    if (lay.titles[index].length) {
      g.append(multiline("panel-title", lay.titles[index], lay.l + plotW / 2, 14, LINE_H.panel, FONT.panel,
        [EDGE, PANEL_W - EDGE]));
      if (lay.titles[index].join(" ") !== String(panel.title).trim().replace(/\s+/g, " ")) {
        g.lastChild.append(svgEl("title", null, panel.title));
      }
    }
    g.append(svgEl("rect", { class: "plot-bg", x: lay.l, y: lay.t, width: plotW, height: PLOT_H }));
    drawAxes(g, chart, sx, sy, X, Y, lay, first);
    const lines = panel.lines || [];
    const bars = Array.isArray(chart.categories);
    for (const line of lines) drawBand(g, line, X, Y, bars);
    const fmtX = (v) => (sx.labels ? String(sx.labels[Math.round(v)] ?? v) : fmtCompact(v));
    const markers = MARKER_KINDS.includes(chart.kind);
    for (const line of lines) drawLine(g, line, X, Y, markers, { chart, fmtX });
    drawLegend(g, lay.legends[index], lay.l, lay.t + PLOT_H + lay.b);
    return g;
  }

  function drawAxes(g, chart, sx, sy, X, Y, lay, first) {
    const plotW = lay.plotW, bottom = lay.t + PLOT_H;
    sy.ticks.forEach((v, i) => {
      g.append(svgEl("line", { class: "grid", x1: lay.l, x2: lay.l + plotW, y1: Y(v), y2: Y(v) }));
      g.append(svgEl("text", { class: "tick", x: lay.l - 6, y: Y(v) + 4, "text-anchor": "end" }, lay.yTicks[i]));
    });
    // x tick labels: categories wrapped to their slot; a number that would run into the previous
    // one is left out (its tick mark stays).
    let right = -Infinity;
    sx.ticks.forEach((v, i) => {
      const x = X(v);
      g.append(svgEl("line", { class: "tick-mark", x1: x, x2: x, y1: bottom, y2: bottom + 4 }));
      if (lay.cats) {
        const full = String(sx.labels[i] == null ? "" : sx.labels[i]);
        const label = multiline("tick", lay.cats[i], x, bottom + 16, LINE_H.small, FONT.small, [2, PANEL_W - 2]);
        if (lay.cats[i].join(" ") !== full.trim().replace(/\s+/g, " ")) label.append(svgEl("title", null, full));
        g.append(label);
        return;
      }
      const text = fmtTick(v, sx.step);
      const w = textWidth(text, FONT.small);
      const cx = clampCentre(x, w, 2, PANEL_W - 2);
      if (cx - w / 2 < right + 4) return;
      right = cx + w / 2;
      g.append(svgEl("text", { class: "tick", x: cx.toFixed(1), y: bottom + 16, "text-anchor": "middle" }, text));
    });
    g.append(svgEl("line", { class: "axis", x1: lay.l, x2: lay.l + plotW, y1: bottom, y2: bottom }));
    g.append(svgEl("line", { class: "axis", x1: lay.l, x2: lay.l, y1: lay.t, y2: bottom }));
    if (lay.xLabel.length) {
      g.append(multiline("axis-label", lay.xLabel, lay.l + plotW / 2, bottom + 34 + lay.tickH, LINE_H.small, FONT.small,
        [EDGE, PANEL_W - EDGE]));
    }
    if (first && lay.yLabel) {
      const cy = lay.t + PLOT_H / 2;
      const label = svgEl("text", { class: "axis-label", x: 14, y: cy, "text-anchor": "middle",
        transform: "rotate(-90 14 " + cy + ")" }, lay.yLabelText);
      if (lay.yLabelText !== lay.yLabel) label.append(svgEl("title", null, lay.yLabel));
      g.append(label);
    }
  }

  function drawBand(g, line, X, Y, bars) {
    const band = (line.band || []).filter((b) => Array.isArray(b) && isNum(b[0]) && isNum(b[1]) && isNum(b[2]));
    if (!band.length) return;
    const attrs = { class: "band", fill: safeColor(line.color), "fill-opacity": 0.15, stroke: "none" };
    if (bars || band.length === 1) {
      // a min-max bar at each point
      const d = band.map((b) => {
        const x = X(b[0]) - 6, y1 = Y(b[2]), y2 = Y(b[1]);
        return "M" + x + " " + y1 + "h12V" + y2 + "h-12Z";
      }).join("");
      g.append(svgEl("path", { ...attrs, d }));
      return;
    }
    const upper = band.map((b) => X(b[0]).toFixed(1) + " " + Y(b[2]).toFixed(1));
    const lower = band.slice().reverse().map((b) => X(b[0]).toFixed(1) + " " + Y(b[1]).toFixed(1));
    g.append(svgEl("path", { ...attrs, d: "M" + upper.join("L") + "L" + lower.join("L") + "Z" }));
  }

  function linePath(points, X, Y) {
    let d = "", pen = false;
    for (const p of points) {
      if (!finitePoint(p)) { pen = false; continue; }
      d += (pen ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1);
      pen = true;
    }
    return d;
  }

  function drawLine(g, line, X, Y, markers, ctx) {
    const pts = (line.points || []).filter(finitePoint);
    if (!pts.length) return;
    const color = safeColor(line.color);
    const style = line.style === "thin" ? "thin" : "bold";
    const common = { class: "line", "data-trial": line.trial == null ? "" : line.trial, "data-style": style,
      "data-label": line.label == null ? "" : line.label };
    let shape, hit;
    if (pts.length === 1) {
      shape = svgEl("circle", { ...common, cx: X(pts[0][0]), cy: Y(pts[0][1]), r: style === "bold" ? 4 : 3, fill: color, stroke: color });
      hit = shape;
    } else {
      const d = linePath(line.points, X, Y);
      shape = svgEl("path", { ...common, d, fill: "none", stroke: color, "stroke-width": style === "thin" ? 1 : 2.5,
        "stroke-dasharray": style === "thin" ? "4 3" : null, "stroke-linejoin": "round" });
      hit = svgEl("path", { class: "hit", d, fill: "none", stroke: "transparent", "stroke-width": 9 });
    }
    g.append(shape);
    if (markers && pts.length > 1) {
      for (const p of pts) g.append(svgEl("circle", { class: "marker", cx: X(p[0]), cy: Y(p[1]), r: 3, fill: color }));
    }
    if (hit !== shape) g.append(hit);
    bindHover(hit, shape, line, pts, g, X, Y, ctx);
  }

  function drawLegend(g, legend, x0, y0) {
    for (const e of legend.placed) {
      const y = y0 + e.row * LEGEND_ROW + 4;
      const item = svgEl("g", { class: "legend-item", transform: "translate(" + (x0 + e.x) + "," + y + ")" },
        e.dot ? svgEl("circle", { cx: 11, cy: 0, r: 3.5, fill: e.color })
          : svgEl("line", { x1: 0, x2: 22, y1: 0, y2: 0, stroke: e.color, "stroke-width": e.style === "thin" ? 1.2 : 2.5,
            "stroke-dasharray": e.style === "thin" ? "4 3" : null }),
        svgEl("text", { class: "legend", x: 27, y: 4 }, e.text));
      if (e.text !== e.label) item.append(svgEl("title", null, e.label));
      g.append(item);
    }
  }

  /* ---------- hover and tooltip ---------- */

  function tooltip() {
    return $("#tooltip") || document.body.appendChild(el("div", { id: "tooltip", role: "tooltip", hidden: true }));
  }

  function bindHover(target, shape, line, pts, g, X, Y, ctx) {
    const enter = () => {
      shape.classList.add("hl");
      g.ownerSVGElement && g.ownerSVGElement.classList.add("hovering");
    };
    const leave = () => {
      shape.classList.remove("hl");
      g.ownerSVGElement && g.ownerSVGElement.classList.remove("hovering");
      tooltip().hidden = true;
    };
    const move = (ev) => {
      let best = pts[0];
      const ctm = g.getScreenCTM && g.getScreenCTM();
      if (ctm && pts.length > 1) {
        const inv = ctm.inverse();
        const mx = inv.a * ev.clientX + inv.c * ev.clientY + inv.e;
        const my = inv.b * ev.clientX + inv.d * ev.clientY + inv.f;
        let bestD = Infinity;
        for (const p of pts) {
          const d = (X(p[0]) - mx) ** 2 + (Y(p[1]) - my) ** 2;
          if (d < bestD) { bestD = d; best = p; }
        }
      }
      showTooltip(ev, line, best, ctx);
    };
    target.addEventListener("pointerenter", enter);
    target.addEventListener("pointerleave", leave);
    target.addEventListener("pointermove", move);
  }

  function showTooltip(ev, line, p, ctx) {
    const tip = tooltip();
    const xl = ctx.chart.x_label || "x", yl = ctx.chart.y_label || "y";
    tip.replaceChildren(
      el("div", { class: "tip-label" }, String(line.label == null ? "" : line.label)),
      el("div", null, xl + ": " + ctx.fmtX(p[0])),
      el("div", null, yl + ": " + trimNum(p[1], 4)),
      line.trial != null ? el("div", { class: "muted" }, "trial " + line.trial) : null);
    tip.hidden = false;
    const w = tip.offsetWidth || 160;
    const left = ev.clientX + 14 + w > window.innerWidth ? ev.clientX - 14 - w : ev.clientX + 14;
    tip.style.left = Math.max(4, left) + "px";
    tip.style.top = ev.clientY + 14 + "px";
  }

  /* ---------- trial page ---------- */

  async function loadTrialPage(id, seq) {
    const base = "/api/trials/" + encodeURIComponent(id);
    const [trial, metrics] = await Promise.all([settle(api(base)), settle(api(base + "/metrics?points=500"))]);
    if (seq !== state.seq) return;
    if (trial.error) throw trial.error;
    const t = trial.value;
    state.trialExperiment = t.experiment;
    renderNav();
    state.view = "trial:" + id;
    document.title = "trial " + t.trial + " · " + t.experiment + " · runner";
    const charts = el("div", { class: "charts-body" });
    if (metrics.error) showError("metrics: " + metrics.error.message);
    else fillCharts(charts, { charts: metricCharts(t, metrics.value.series || []) });
    swapContent(el("div", { id: "trial", "data-trial": t.trial, "data-status": t.status },
      el("nav", { class: "crumbs" },
        el("a", { href: expUrl(t.experiment) }, String(t.experiment)), " / trial " + t.trial),
      el("header", { class: "page-head" },
        el("h1", null, "trial " + t.trial + " · " + fmtScalar(t.label)), statusPill(t.status)),
      t.error ? el("pre", { class: "error-box" }, String(t.error)) : null,
      el("dl", { class: "summary card" }, summaryItems(t)),
      el("section", { id: "charts", class: "card" },
        el("div", { class: "section-head" }, el("h2", null, "Metrics")), charts),
      el("section", { class: "card" },
        el("div", { class: "section-head" }, el("h2", null, "Configuration")),
        el("pre", { id: "config" }, JSON.stringify(t.config == null ? null : t.config, null, 2)))));
  }

  function summaryItems(t) {
    const arch = Object.entries(t.arch_params || {}).map(([k, v]) => k + "=" + fmtScalar(v)).join(", ");
    const settings = Object.entries(t.settings || {}).map(([k, v]) => k + "=" + fmtScalar(v)).join(", ");
    const steps = isNum(t.steps) ? t.steps + (isNum(t.total_steps) ? " / " + t.total_steps : "") : DASH;
    const best = isNum(t.best_val_error) ? fmtPct(t.best_val_error) + " %" + (isNum(t.best_step) ? " @ " + t.best_step : "") : DASH;
    const items = [
      ["status", statusPill(t.status)], ["label", fmtScalar(t.label)], ["arch", fmtScalar(t.arch)],
      ["arch params", arch || DASH], settings ? ["settings", settings] : null,
      ["seed", fmtScalar(t.seed)], ["dataset", fmtScalar(t.dataset)], ["params", fmtParams(t.params)],
      ["MFLOPs", isNum(t.mflops) ? t.mflops.toFixed(1) : DASH], ["steps", steps], ["best val error", best],
      ["test error", isNum(t.test_error) ? fmtPct(t.test_error) + " %" : DASH],
      ["train loss", isNum(t.train_loss) ? trimNum(t.train_loss, 4) : DASH],
      ["images/s", isNum(t.images_per_s) ? t.images_per_s.toFixed(1) : DASH], ["wall time", fmtDuration(t.wall_s)],
      ["ETA", t.status === "running" ? fmtDuration(t.eta_s) : DASH], ["worker", fmtScalar(t.worker)],
      ["started", fmtDate(t.started_at)], ["finished", fmtDate(t.finished_at)],
      ["heartbeat", fmtDate(t.heartbeat_at)], ["attempts", fmtScalar(t.attempts)], ["key", fmtScalar(t.key)],
    ];
    return items.filter(Boolean).map(([k, v]) => el("div", { class: "kv" }, el("dt", null, k), el("dd", null, v)));
  }

  // Chart objects (the shape /api/.../charts sends) from a trial's metric series.
  function metricCharts(t, series) {
    const find = (split, name) => series.find((s) => s.split === split && s.name === name);
    const pts = (s, scale) => (s && Array.isArray(s.steps) ? s.steps.map((x, i) =>
      [x, isNum(s.values[i]) ? s.values[i] * scale : null]) : []);
    const colors = { train: "#1f77b4", val: "#1f77b4", test: "#d62728" };
    const lineOf = (split, name, scale) => {
      const s = find(split, name);
      const points = pts(s, scale).filter(finitePoint);
      return points.length ? { label: split, color: colors[split], style: split === "train" && name !== "lr" ? "thin" : "bold",
        trial: t.trial, points, band: [] } : null;
    };
    const chart = (kind, title, yLabel, name, scale, splits) => ({
      kind, title, x_label: "step", y_label: yLabel, categories: null,
      panels: [{ title: "", lines: splits.map((s) => lineOf(s, name, scale)).filter(Boolean) }],
    });
    const charts = [
      chart("error", "error", "error (%)", "error", 100, ["train", "val", "test"]),
      chart("loss", "loss", "loss", "loss", 1, ["train", "val", "test"]),
      chart("lr", "learning rate", "lr", "lr", 1, ["train", "val"]),
    ];
    return charts.filter((c) => c.panels[0].lines.length);
  }

  /* ---------- live updates ---------- */

  async function poll() {
    try {
      const v = await api("/api/version");
      const version = v && v.version;
      const changed = state.version != null && version !== state.version;
      state.version = version;
      if (changed) { state.updatedAt = new Date(); await loadPage(false); }
      setLive(true);
    } catch (e) {
      setLive(false);
    }
    setTimeout(poll, POLL_MS);
  }

  /* ---------- start ---------- */

  function start() {
    $("#error").addEventListener("click", clearError);
    document.addEventListener("click", onLinkClick);
    window.addEventListener("popstate", () => navigate(location.pathname + location.search, false));
    let resizing = null;
    window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(relayoutCharts, 150); });
    loadPage(true);
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
