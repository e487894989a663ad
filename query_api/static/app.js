// The analyst page: reads the query API with a read key typed in by the user. The key is
// held in this closure only (no storage, no URL, no cookie) and sent as a bearer header.
// Every number shown is the API's own, unrounded in `data-value`; text is set with
// textContent only, never parsed as HTML.
(function () {
  "use strict";

  let readKey = "";
  let funnels = [];
  let current = null; // {id, steps, from, to}
  let liveStream = null; // AbortController of the open SSE request
  let liveTimer = null;
  let boardCursor = null;
  const charts = {};

  const $ = (id) => document.getElementById(id);

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  async function api(path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      for (const one of [].concat(v)) if (one !== "" && one != null) query.append(k, one);
    }
    const url = path + (query.toString() ? "?" + query : "");
    const r = await fetch(url, { headers: { Authorization: "Bearer " + readKey } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`${path}: ${r.status} ${body.error || ""} ${body.message || ""}`);
    return body;
  }

  function cell(text, value) {
    const td = document.createElement("td");
    td.textContent = text;
    if (value !== undefined) td.dataset.value = String(value);
    return td;
  }

  function row(tbody, cells, key) {
    const tr = document.createElement("tr");
    if (key !== undefined) tr.dataset.key = String(key);
    for (const c of cells) tr.appendChild(c);
    tbody.appendChild(tr);
    return tr;
  }

  const pct = (x) => (x * 100).toFixed(1) + "%";
  const seconds = (s) =>
    s == null ? "–" : s < 120 ? s.toFixed(0) + " s" : s < 7200 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(1) + " h";
  const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) : "–");
  const label = (step) => step.name || step.event;

  function chart(id, opts, data) {
    const el = $(id);
    if (charts[id]) charts[id].destroy();
    el.textContent = "";
    if (typeof uPlot === "undefined") {
      el.textContent = "chart library missing: run scripts/setup.sh";
      el.className = "chart error";
      return;
    }
    const width = Math.max(300, el.clientWidth || 600);
    charts[id] = new uPlot({ width, height: 220, legend: { show: false }, ...opts }, data, el);
  }

  function barChart(id, labels, values, color) {
    const xs = labels.map((_, i) => i);
    chart(
      id,
      {
        scales: { x: { time: false, range: [-0.5, labels.length - 0.5] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi) * 1.1] } },
        axes: [
          { splits: () => xs, values: (u, splits) => splits.map((i) => labels[i] ?? "") },
          { size: 60 },
        ],
        series: [{}, { fill: color, stroke: color, paths: uPlot.paths.bars({ size: [0.6, 120] }), points: { show: false } }],
      },
      [xs, values]
    );
  }

  // --- the report: funnel, trend, time to convert, breakdown -------------------------

  function range() {
    return { from: current.from, to: current.to };
  }

  async function showReport() {
    const report = await api(`/v1/funnels/${current.id}/report`, range());
    const tbody = $("steps").querySelector("tbody");
    tbody.textContent = "";
    for (const s of report.steps) {
      row(
        tbody,
        [
          cell(`${s.index + 1}. ${s.name || s.event}`),
          cell(String(s.visitors), s.visitors),
          cell(pct(s.conversion_from_start), s.conversion_from_start),
          cell(pct(s.conversion_from_previous), s.conversion_from_previous),
          cell(String(s.dropped), s.dropped),
          cell(String(s.in_progress), s.in_progress),
          cell(seconds(s.median_seconds_from_start), s.median_seconds_from_start ?? ""),
        ],
        s.index
      );
    }
    barChart("funnel-chart", report.steps.map((s) => s.name || s.event), report.steps.map((s) => s.visitors), "#3b82f6");
  }

  async function showTrend() {
    const trend = await api(`/v1/funnels/${current.id}/trend`, { ...range(), interval: "day" });
    const xs = trend.points.map((p) => Date.parse(p.bucket) / 1000);
    const ys = trend.points.map((p) => p.conversion * 100);
    $("trend-chart").dataset.points = String(trend.points.length);
    chart(
      "trend-chart",
      {
        scales: {
          x: { range: () => [Date.parse(current.from) / 1000, Date.parse(current.to) / 1000] },
          y: { range: [0, 100] },
        },
        axes: [{}, { size: 50, values: (u, v) => v.map((x) => x + "%") }],
        series: [{}, { stroke: "#10b981", width: 2, fill: "rgba(16,185,129,.12)", points: { show: true } }],
      },
      [xs, ys]
    );
  }

  async function showTimeToConvert() {
    const histogram = await api(`/v1/funnels/${current.id}/time-to-convert`, { ...range(), bins: 12 });
    const labels = histogram.bins.map((b) => seconds(b.from_seconds));
    barChart("ttc-chart", labels, histogram.bins.map((b) => b.attempts), "#8b5cf6");
  }

  async function showBreakdown() {
    const property = $("breakdown-property").value.trim() || "utm_source";
    const result = await api(`/v1/funnels/${current.id}/breakdown`, { ...range(), property, limit: 8 });
    const head = $("breakdown").querySelector("thead");
    const tbody = $("breakdown").querySelector("tbody");
    head.textContent = "";
    tbody.textContent = "";
    const names = current.steps.map(label);
    const hr = document.createElement("tr");
    for (const h of [property, ...names, "conversion"]) {
      const th = document.createElement("th");
      th.textContent = h;
      hr.appendChild(th);
    }
    head.appendChild(hr);
    for (const g of result.groups) {
      const last = g.steps[g.steps.length - 1];
      row(
        tbody,
        [
          cell(g.other ? "(other)" : g.value || "(none)"),
          ...g.steps.map((s) => cell(String(s.visitors), s.visitors)),
          cell(pct(last.conversion_from_start), last.conversion_from_start),
        ],
        g.other ? "\u0000other" : g.value
      );
    }
  }

  // --- live counts, refreshed when the stream says a visitor moved -------------------

  async function showLive() {
    const live = await api(`/v1/funnels/${current.id}/live`, { minutes: 15 });
    const tbody = $("live").querySelector("tbody");
    tbody.textContent = "";
    for (const s of live.stages) {
      row(
        tbody,
        [
          cell(`${s.index + 1}. ${s.name || s.event}`),
          cell(String(s.at_stage), s.at_stage),
          cell(String(s.reached), s.reached),
          cell(String(s.transitions), s.transitions),
        ],
        s.index
      );
    }
    $("live").dataset.updated = String(Date.now());
  }

  function refreshLiveSoon() {
    if (liveTimer) return;
    liveTimer = setTimeout(() => {
      liveTimer = null;
      showLive().catch((e) => status(e.message, true));
      showBoard(false).catch((e) => status(e.message, true));
    }, 500);
  }

  // Server-sent events read with fetch: EventSource cannot send the key as a header, and
  // the key must not go into the URL.
  async function followLive(funnelId, controller) {
    let lastId = null;
    let received = 0;
    while (!controller.signal.aborted) {
      try {
        const headers = { Authorization: "Bearer " + readKey, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const r = await fetch(`/v1/funnels/${funnelId}/live/stream`, { headers, signal: controller.signal });
        if (!r.ok) throw new Error(`live stream: ${r.status}`);
        $("live-state").textContent = "(following)";
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let kind = "message";
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) kind = line.slice(7);
              else if (line.startsWith("id: ")) lastId = line.slice(4);
            }
            if (kind === "transition" || kind === "correction") {
              received += 1;
              $("live-state").textContent = `(following: ${received} updates)`;
              refreshLiveSoon();
            }
          }
        }
      } catch (e) {
        if (controller.signal.aborted) return;
        $("live-state").textContent = "(reconnecting)";
      }
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }

  // --- the board ---------------------------------------------------------------------

  function boardParams() {
    const stage = $("board-stage").value;
    const hours = parseFloat($("board-stalled").value);
    const property = $("board-property").value.trim();
    return {
      stage,
      stalled_for: Number.isFinite(hours) ? Math.round(hours * 3600) : "",
      property,
      limit: 50,
    };
  }

  async function showBoard(more) {
    const params = boardParams();
    const board = await api(`/v1/funnels/${current.id}/board`, { ...params, cursor: more ? boardCursor : "" });
    const tbody = $("board").querySelector("tbody");
    if (!more) tbody.textContent = "";
    $("board-property-head").textContent = params.property || "property";
    for (const v of board.visitors) {
      row(
        tbody,
        [
          cell(v.visitor_id),
          cell(label(current.steps[v.stage]), v.stage),
          cell(when(v.entered_at), v.entered_at),
          cell(when(v.last_activity_at), v.last_activity_at ?? ""),
          cell(params.property ? v.properties[params.property] ?? "" : ""),
        ],
        v.visitor_id
      );
    }
    const totals = $("board-totals");
    totals.textContent = board.stages.map((s) => `${label(s)}: ${s.visitors}`).join(" · ");
    totals.dataset.values = board.stages.map((s) => s.visitors).join(",");
    boardCursor = board.next_cursor;
    $("board-more").hidden = !boardCursor;
  }

  // --- wiring ------------------------------------------------------------------------

  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }

  $("key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    readKey = $("key").value.trim();
    $("key").value = "";
    try {
      funnels = (await api("/v1/funnels")).filter((f) => f.status === "active" && f.steps);
    } catch (e) {
      status(e.message, true);
      return;
    }
    const select = $("funnel");
    select.textContent = "";
    for (const f of funnels) {
      const option = document.createElement("option");
      option.value = f.id;
      option.textContent = f.id;
      select.appendChild(option);
    }
    const today = new Date();
    $("to").value = isoDay(new Date(today.getTime() + 86400000));
    $("from").value = isoDay(new Date(today.getTime() - 30 * 86400000));
    $("key-form").hidden = true;
    $("pick").hidden = false;
    status(funnels.length ? "" : "no funnels in this project yet");
  });

  $("pick").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const funnel = funnels.find((f) => f.id === $("funnel").value);
    if (!funnel) return;
    current = { id: funnel.id, steps: funnel.steps, from: $("from").value + "T00:00:00Z", to: $("to").value + "T00:00:00Z" };
    const stage = $("board-stage");
    stage.length = 1;
    funnel.steps.forEach((s, i) => stage.add(new Option(`${i + 1}. ${label(s)}`, String(i))));
    $("report").hidden = false;
    status("loading…");
    document.body.dataset.loaded = "";
    boardCursor = null;
    const results = await Promise.allSettled([showReport(), showTrend(), showTimeToConvert(), showBreakdown(), showLive(), showBoard(false)]);
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
    status(failed.join("; "), failed.length > 0);
    document.body.dataset.loaded = current.id;
    if (liveStream) liveStream.abort();
    liveStream = new AbortController();
    followLive(current.id, liveStream);
  });

  $("breakdown-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    showBreakdown().catch((e) => status(e.message, true));
  });
  $("board-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    showBoard(false).catch((e) => status(e.message, true));
  });
  $("board-more").addEventListener("click", () => showBoard(true).catch((e) => status(e.message, true)));
})();
