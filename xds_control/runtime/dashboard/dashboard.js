// The xds-control dashboard: polls api/state every second and redraws tables and SVG plots.
// Plain DOM and SVG; every value is inserted as text (never as HTML).
"use strict";
(() => {
  const POLL_MS = 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f6fb4", "#c8372d", "#2b8a3e", "#7b4fb0", "#d9730d", "#138a95", "#8c564b", "#c2418f",
    "#5f6b73", "#8f9a12"];
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = String(v);
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
    return e;
  }

  const dash = "\u2013";
  const fmt = {
    num: (v, d = 2) => (v === null || v === undefined ? dash : Number(v).toFixed(d)),
    int: (v) => (v === null || v === undefined ? dash : String(Math.round(v))),
    pct: (v) => (v === null || v === undefined ? dash : `${(v * 100).toFixed(0)} %`),
    ms: (v) => (v === null || v === undefined ? dash : `${(v * 1000).toFixed(0)} ms`),
    time: (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false }),
  };

  function cells(row, values) {
    for (const v of values) row.append(v instanceof Node ? v : el("td", { text: v }));
    return row;
  }

  function badge(text, kind) {
    return el("span", { class: `badge ${kind || ""} ${String(text).replace(/[^a-z_]/gi, "")}`, text });
  }

  // -- fleet ----------------------------------------------------------------------------------------
  function summary(p) {
    const dl = el("dl", { class: "summary" });
    const items = [
      ["Current", fmt.int(p.current)], ["Target", fmt.int(p.target)], ["Ready", fmt.int(p.ready)],
      ["Bounds", `${p.min_replicas}\u2013${p.max_replicas}`],
      ["Request rate", p.request_rate === null ? dash : `${fmt.num(p.request_rate, 1)} req/s`],
      ["SLO attainment", fmt.pct(p.slo_attainment)],
      ["TTFT target", fmt.ms(p.ttft_target_s)],
    ];
    for (const [k, v] of items) dl.append(el("div", {}, el("dt", { text: k }), el("dd", { text: v })));
    return dl;
  }

  function endpointTable(p) {
    const table = el("table", { class: "endpoints" });
    table.append(el("caption", { text: `Replicas of pool ${p.pool}` }));
    const head = el("tr");
    const cols = p.autoscaled
      ? ["Replica", "Endpoint", "Zone", "State", "Phase", "Weight", "Load", "Running", "Queue", "KV %", "TTFT"]
      : ["Endpoint", "Zone", "Health", "Weight"];
    for (const c of cols) head.append(el("th", { scope: "col", text: c }));
    table.append(el("thead", {}, head));
    const body = el("tbody");
    for (const e of p.endpoints || []) {
      const row = el("tr", { "data-replica": e.replica || e.key, "data-endpoint": e.key });
      if (p.autoscaled) {
        cells(row, [
          el("th", { scope: "row", text: e.replica || dash }), e.key, e.zone || dash,
          el("td", {}, badge(e.state, "state")), el("td", {}, badge(e.phase, "phase")),
          el("td", { class: "n", text: e.weight }), el("td", { class: "n", text: fmt.num(e.load) }),
          el("td", { class: "n", text: fmt.int(e.running) }), el("td", { class: "n", text: fmt.int(e.waiting) }),
          el("td", { class: "n", text: fmt.pct(e.kv_cache) }), el("td", { class: "n", text: fmt.ms(e.ttft_s) }),
        ]);
      } else {
        cells(row, [el("th", { scope: "row", text: e.key }), e.zone || dash, e.state,
          el("td", { class: "n", text: e.weight })]);
      }
      body.append(row);
    }
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: cols.length, text: "No endpoint." })));
    table.append(body);
    return table;
  }

  function poolSection(p) {
    const title = el("h3", {}, `${p.service} / ${p.pool} `);
    if (p.autoscaled) title.append(badge(p.policy, "policy"));
    else title.append(badge("static", "policy"));
    if (p.paused) title.append(" ", badge("paused", "warn"));
    const sec = el("section", { class: "pool", "data-pool": p.pool, "aria-label": `Pool ${p.pool}` }, title);
    if (p.alert) sec.append(el("p", { class: "alert", role: "alert", text: `Signals lost: ${p.alert}` }));
    if (p.autoscaled) {
      sec.append(summary(p));
      if (p.plan_explanation) sec.append(el("p", { class: "explanation", text: `Plan: ${p.plan_explanation}` }));
    }
    sec.append(el("div", { class: "scroll" }, endpointTable(p)));
    if (p.shadows && p.shadows.length) {
      const ul = el("ul", { class: "shadows", "aria-label": "Shadow policies (decide, never act)" });
      for (const s of p.shadows) {
        ul.append(el("li", { text: `Shadow ${s.policy}: ${s.current} \u2192 ${s.target} (${s.explanation})` }));
      }
      sec.append(ul);
    }
    return sec;
  }

  // -- plots ------------------------------------------------------------------------------------------
  function niceStep(span) {
    const raw = span / 4;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
    return 10 * mag;
  }

  // One line chart. series: [{name, values, color, dash, step}]; t: wall seconds per point.
  function lineChart(title, t, series, opts = {}) {
    const W = 440, H = 170, L = 56, R = 10, T = 10, B = 24;
    const fig = el("figure", { class: "chart" });
    const caption = el("figcaption", { text: title });
    const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
    let ymax = opts.yMax !== undefined ? opts.yMax : Math.max(opts.minMax || 1, ...values, opts.ref || 0) * 1.1;
    const step = niceStep(ymax || 1);
    ymax = Math.ceil(ymax / step) * step;
    const t0 = t.length ? t[0] : 0, t1 = t.length ? t[t.length - 1] : 1;
    const span = Math.max(t1 - t0, 1);
    const x = (tt) => L + ((tt - t0) / span) * (W - L - R);
    const y = (v) => T + (1 - v / ymax) * (H - T - B);
    const latest = series.map((s) => {
      const v = [...s.values].reverse().find((u) => u !== null && u !== undefined);
      return `${s.name} ${v === undefined ? "unknown" : (opts.format || fmt.num)(v)}`;
    });
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: latest ${latest.join(", ")}` });
    for (let v = 0; v <= ymax + 1e-9; v += step) {
      root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      const lab = svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" });
      lab.textContent = opts.tick ? opts.tick(v) : Number(v.toFixed(2)).toString();
      root.append(lab);
    }
    for (let i = 0; i <= 3; i++) {
      const tt = t0 + (span * i) / 3;
      const lab = svg("text", { x: x(tt), y: H - 6, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle",
        class: "tick" });
      lab.textContent = t.length ? fmt.time(tt) : "";
      root.append(lab);
    }
    root.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    if (opts.ref !== undefined && opts.ref !== null) {
      root.append(svg("line", { x1: L, x2: W - R, y1: y(opts.ref), y2: y(opts.ref), class: "ref" }));
    }
    for (const s of series) {
      let d = "", prev = null;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { prev = null; return; }
        const px = x(t[i]).toFixed(1), py = y(v).toFixed(1);
        if (prev === null) d += `M${px} ${py}`;
        else d += s.step ? `H${px}V${py}` : `L${px} ${py}`;
        prev = v;
      });
      if (d) root.append(svg("path", { d, stroke: s.color, "stroke-dasharray": s.dash ? "5 3" : null, class: "line" }));
    }
    const legend = el("ul", { class: "legend" });
    series.forEach((s, i) => legend.append(el("li", {},
      el("span", { class: `swatch${s.dash ? " dashed" : ""}`, style: `border-color:${s.color}`, "aria-hidden": "true" }),
      latest[i])));
    if (opts.ref !== undefined && opts.ref !== null) {
      legend.append(el("li", {}, el("span", { class: "swatch ref", "aria-hidden": "true" }),
        `${opts.refName || "target"} ${(opts.format || fmt.num)(opts.ref)}`));
    }
    fig.append(caption, root, legend);
    return fig;
  }

  function poolPlots(p) {
    const s = p.series;
    const sec = el("section", { class: "pool-plots", "aria-label": `Plots of pool ${p.pool}` },
      el("h3", { text: `${p.service} / ${p.pool}` }));
    const grid = el("div", { class: "charts" });
    const c = (i) => PALETTE[i % PALETTE.length];
    grid.append(lineChart("Offered load (gateway requests/s)", s.t,
      [{ name: "requests/s", values: s.request_rate, color: c(0) }], { format: (v) => fmt.num(v, 1) }));
    grid.append(lineChart("Replicas", s.t, [
      { name: "current", values: s.current, color: c(0), step: true },
      { name: "target", values: s.target, color: c(1), step: true, dash: true },
      { name: "ready", values: s.ready, color: c(2), step: true },
    ], { minMax: p.max_replicas || 1, format: fmt.int }));
    grid.append(lineChart("EDS weight per replica", s.t,
      Object.entries(s.weights).map(([name, values], i) => ({ name, values, color: c(i), step: true })),
      { format: fmt.int }));
    grid.append(lineChart("Mean time to first token (s)", s.t,
      [{ name: "TTFT", values: s.ttft_s, color: c(3) }],
      { ref: p.ttft_target_s, refName: "target", minMax: 0.01, format: fmt.ms, tick: (v) => `${(v * 1000).toFixed(0)} ms` }));
    grid.append(lineChart("SLO attainment (TTFT within target, last minute)", s.t,
      [{ name: "attainment", values: s.slo_attainment, color: c(2) }],
      { yMax: 1, format: fmt.pct, tick: (v) => `${Math.round(v * 100)} %` }));
    grid.append(lineChart("Load index (smoothed)", s.t,
      [{ name: "load index", values: s.load_index, color: c(4) }], { minMax: 1 }));
    sec.append(grid);
    return sec;
  }

  // -- decisions, events, proxies -----------------------------------------------------------------------
  function decisionRows(decisions) {
    const body = $("decision-rows");
    body.replaceChildren();
    for (const d of decisions.slice(0, 15)) {
      const change = d.target !== d.current;
      const row = el("tr", { class: change ? "change" : null });
      cells(row, [fmt.time(d.at), `${d.service} / ${d.pool}`, d.policy, d.mode,
        el("td", { class: "n", text: `${d.current} \u2192 ${d.target}${change ? " (scale)" : ""}, ready ${d.ready}` }),
        el("td", { class: "n", text: fmt.num(d.load_index) }), el("td", { class: "n", text: d.version || dash }),
        el("td", { class: "explain", text: d.explanation })]);
      body.append(row);
    }
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 8, text: "No decision yet." })));
  }

  function eventRows(events) {
    const body = $("event-rows");
    body.replaceChildren();
    for (const e of events.slice(0, 30)) {
      const detail = e.message || [e.replica, e.endpoint, e.zone, e.reason].filter(Boolean).join(" ");
      cells(body.appendChild(el("tr", { class: e.kind })),
        [fmt.time(e.at), el("td", {}, badge(e.kind, "event")), e.pool || dash, detail || dash]);
    }
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 4, text: "No event yet." })));
  }

  function proxyRows(xds) {
    $("xds-summary").textContent = `Snapshot v${xds.version}, last good v${xds.last_good_version}` +
      (xds.last_error ? `; last error: ${xds.last_error}` : "") +
      (xds.rejections.length ? `; ${xds.rejections.length} recent rejection(s), newest: ` +
        `${xds.rejections[xds.rejections.length - 1].message}` : "");
    const body = $("proxy-rows");
    body.replaceChildren();
    for (const p of xds.proxies) {
      const types = p.types.length ? p.types : [null];
      types.forEach((t, i) => {
        const row = el("tr", { "data-node": p.node });
        if (i === 0) {
          row.append(el("th", { scope: "row", rowspan: types.length, text: p.node }),
            el("td", { rowspan: types.length, text: p.cluster }), el("td", { rowspan: types.length, text: p.protocol }),
            el("td", { rowspan: types.length, text: p.peer }));
        }
        if (t === null) cells(row, [dash, dash, dash, dash, ""]);
        else {
          cells(row, [t.type, el("td", {}, badge(t.state, "sync")), el("td", { class: "n", text: t.sent_version ?? dash }),
            el("td", { class: "n", text: t.acked_version ?? dash }), t.error || ""]);
        }
        body.append(row);
      });
    }
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 9, text: "No proxy connected." })));
  }

  function alertList(state) {
    const ul = $("alert-list");
    ul.replaceChildren();
    for (const a of state.alerts) ul.append(el("li", { class: "alert", text: `${a.pool}: signals lost (${a.message}); ` +
      "holding replicas and weights" }));
    if (state.xds.last_error) ul.append(el("li", { class: "alert", text: `publish failed: ${state.xds.last_error}` }));
    if (!ul.children.length) ul.append(el("li", { class: "none", text: "None." }));
  }

  function render(state) {
    alertList(state);
    const pools = $("pools");
    pools.replaceChildren(...state.pools.map(poolSection));
    if (!state.pools.length) pools.append(el("p", { class: "none", text: "No pool configured." }));
    const plots = state.pools.filter((p) => p.series && p.series.t.length);
    $("plot-pools").replaceChildren(...plots.map(poolPlots));
    if (!plots.length) $("plot-pools").append(el("p", { class: "none", text: "No history yet." }));
    decisionRows(state.decisions);
    eventRows(state.events);
    proxyRows(state.xds);
    $("status").textContent = `Connected to ${state.instance}${state.leader ? " (leader)" : " (follower)"}; ` +
      `snapshot v${state.xds.version}; ${state.xds.proxies.length} proxies; updated ${fmt.time(state.at)}`;
    $("status").className = "ok";
    document.body.dataset.updated = String(state.at);
  }

  async function poll() {
    try {
      const resp = await fetch("api/state", { cache: "no-store" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      render(await resp.json());
    } catch (err) {
      $("status").textContent = `Disconnected (${err.message}); retrying every second`;
      $("status").className = "bad";
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
