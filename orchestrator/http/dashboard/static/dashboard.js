"use strict";
// The dashboard page. It polls the daemon's /ui/api while visible and builds every element with
// DOM calls (never innerHTML), so a log line or a failure reason cannot turn into markup.
(() => {
  const POLL_MS = 2000;
  const FAST_MS = 250; // right after an action, until the model has settled
  const FAST_FOR_MS = 4000;
  const HISTORY_S = 600;
  const LOG_KEEP = 1000;
  const GIB = 1024 ** 3;
  const main = document.getElementById("main");
  let csrf = "";

  // ----- DOM helpers -----

  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    el.append(...kids.flat().filter((x) => x !== null && x !== undefined && x !== false));
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  // Reuse children by key, so rows keep their buttons and focus across polls. Children without
  // a key (a table's thead) stay first.
  function keyed(parent, items, key, make, update) {
    const kids = [...parent.children];
    const fixed = kids.filter((el) => el.dataset.key === undefined).length;
    const old = new Map(kids.filter((el) => el.dataset.key !== undefined)
      .map((el) => [el.dataset.key, el]));
    const want = items.map((item) => {
      let el = old.get(key(item));
      if (!el) {
        el = make(item);
        el.dataset.key = key(item);
      }
      update(el, item);
      return el;
    });
    want.forEach((el, i) => {
      const at = parent.children[fixed + i];
      if (at !== el) parent.insertBefore(el, at || null);
    });
    while (parent.children.length > fixed + want.length) parent.lastElementChild.remove();
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  // ----- formatting -----

  const fmt = {
    gib: (b, total = b) => (b / GIB).toFixed(total < 100 * GIB ? 1 : 0),
    mem: (used, total) => `${fmt.gib(used, total)} / ${fmt.gib(total)} GiB`,
    dur(s) {
      if (s === null || s === undefined) return "—";
      s = Math.floor(s);
      if (s < 60) return `${s}s`;
      const m = Math.floor(s / 60);
      if (m < 60) return `${m}m ${s % 60}s`;
      const hr = Math.floor(m / 60);
      return hr < 48 ? `${hr}h ${m % 60}m` : `${Math.floor(hr / 24)}d ${hr % 24}h`;
    },
    pct: (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`),
    ms(s) {
      if (s === null || s === undefined) return "—";
      const ms = s * 1000;
      return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
    },
    rate: (x, unit) =>
      x === null || x === undefined ? "—" : `${x < 10 ? x.toFixed(1) : Math.round(x)} ${unit}`,
    int: (n) => (n === null || n === undefined ? "—" : n.toLocaleString("en-US")),
  };

  function sliceLabel(sl) {
    if (!sl) return "—";
    return `${sl.profile || "whole GPU"} · GPU ${sl.gpu_index}`;
  }

  // What went wrong, if anything: the live reason, else why the last run ended.
  function trouble(m) {
    if (m.reason) return m.reason;
    if (["failed", "backoff"].includes(m.state) && m.last_exit) return m.last_exit.reason;
    return null;
  }

  // ----- talking to the daemon -----

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, opts = {}) {
    const init = { method: opts.method || "GET", credentials: "same-origin", headers: {} };
    if (init.method !== "GET") init.headers["X-CSRF-Token"] = csrf;
    if (opts.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    const r = await fetch(path, init);
    const data = await r.json().catch(() => null);
    if (r.status === 401 && !opts.quiet) {
      location.assign("/ui/login");
      throw new ApiError(401, "log in first");
    }
    if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.statusText);
    return data;
  }

  const updated = document.getElementById("updated");

  // Polls while the tab is visible; `fast()` polls quickly for a while after an action.
  function poller(tick) {
    let timer = null;
    let busy = false;
    let fastUntil = 0;
    async function run() {
      if (busy) return;
      clearTimeout(timer);
      if (document.hidden) return; // nobody looks: no request, so no cost on the daemon
      busy = true;
      const started = Date.now();
      try {
        await tick();
        updated.classList.remove("error");
        setText(updated, `updated ${new Date().toLocaleTimeString()}`);
      } catch (e) {
        if (!e.status) console.error(e);
        updated.classList.add("error");
        setText(updated, e.status ? e.message : `no answer (${e.message}), retrying…`);
      } finally {
        busy = false;
      }
      // Every POLL_MS from start to start, so the page is never more than that behind.
      const period = Date.now() < fastUntil ? FAST_MS : POLL_MS;
      timer = setTimeout(run, Math.max(0, period - (Date.now() - started)));
    }
    document.addEventListener("visibilitychange", run);
    return {
      run,
      fast() {
        fastUntil = Date.now() + FAST_FOR_MS;
        run();
      },
    };
  }

  let toastTimer = null;
  function toast(text, bad) {
    let el = document.getElementById("toast");
    if (!el) {
      el = h("div", { id: "toast", role: "status" });
      document.body.append(el);
    }
    el.className = bad ? "toast bad" : "toast";
    el.textContent = text;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => el.remove(), 4000);
  }

  async function act(name, verb, poll) {
    try {
      await api(`/ui/api/models/${encodeURIComponent(name)}/${verb}`, { method: "POST" });
      toast(`${verb} ${name}: requested`);
    } catch (e) {
      toast(`${verb} ${name}: ${e.message}`, true);
    }
    poll.fast();
  }

  function actions(name, poll) {
    const btn = (verb, label, cls) =>
      h("button", {
        type: "button",
        class: `btn small ${cls}`,
        "data-action": verb,
        text: label,
        onclick: () => act(name, verb, poll),
      });
    return h("div", { class: "actions" }, btn("start", "Start", ""), btn("stop", "Stop", "danger"),
      btn("restart", "Restart", ""));
  }

  function updateActions(box, m) {
    const stopped = m.state === "stopped" || m.state === "failed";
    box.querySelector('[data-action="start"]').disabled = !stopped;
    box.querySelector('[data-action="stop"]').disabled = m.state === "stopped";
  }

  function badge() {
    return h("span", { class: "badge" });
  }

  function updateBadge(el, state) {
    setText(el, state);
    el.className = `badge s-${state}`;
  }

  function bar() {
    return h("div", { class: "bar" }, h("div", { class: "fill" }));
  }

  function updateBar(el, used, total) {
    const f = total > 0 ? Math.min(1, used / total) : 0;
    const fill = el.firstChild;
    fill.style.width = `${(100 * f).toFixed(1)}%`;
    fill.className = f > 0.9 ? "fill high" : "fill";
  }

  // ----- the admin's overview -----

  // The buttons' column has no visible title, but a screen reader needs one (axe: empty-table-header).
  const ACTIONS = "Actions";
  const MODEL_COLUMNS = ["Model", "State", "Slice", "Uptime", "Restarts", "Throughput",
    "TTFT p50", "Prefix hits", "Endpoint", ACTIONS];

  function makeModel(poll) {
    return (m) => {
      const c = {
        name: h("a", { href: `/ui/models/${encodeURIComponent(m.name)}`, class: "model-link" }),
        student: h("div", { class: "muted small nowrap" }),
        state: badge(),
        slice: h("td"),
        uptime: h("td", { class: "num" }),
        restarts: h("td", { class: "num" }),
        tps: h("td", { class: "num" }),
        ttft: h("td", { class: "num" }),
        hits: h("td", { class: "num" }),
        endpoint: h("code", { class: "endpoint" }),
        actions: actions(m.name, poll),
        reason: h("td", { colspan: MODEL_COLUMNS.length, class: "reason" }),
      };
      const reasonRow = h("tr", { class: "reason-row" }, c.reason);
      const body = h("tbody", { class: "model" },
        h("tr", {}, h("td", {}, c.name, c.student), h("td", {}, c.state), c.slice, c.uptime,
          c.restarts, c.tps, c.ttft, c.hits, h("td", {}, c.endpoint), h("td", {}, c.actions)),
        reasonRow);
      body.refs = c;
      body.reasonRow = reasonRow;
      return body;
    };
  }

  function updateModel(stats) {
    return (body, m) => {
      const c = body.refs;
      const st = stats[m.name];
      setText(c.name, m.name);
      setText(c.student, m.served_model_name !== m.name ? `serves ${m.served_model_name}` : "");
      updateBadge(c.state, m.state);
      setText(c.slice, sliceLabel(m.slice));
      setText(c.uptime, fmt.dur(m.uptime_s));
      setText(c.restarts, String(m.restarts));
      setText(c.tps, st ? fmt.rate(st.generation_tps, "tok/s") : "—");
      setText(c.ttft, st ? fmt.ms(st.ttft_p50_s) : "—");
      setText(c.hits, st ? fmt.pct(st.hit_rate) : "—");
      setText(c.endpoint, m.endpoint);
      updateActions(c.actions, m);
      const why = trouble(m);
      body.reasonRow.hidden = !why;
      setText(c.reason, why ? `⚠ ${why}` : "");
      body.classList.toggle("failing", m.state === "failed");
    };
  }

  function spark() {
    const el = svg("svg", { class: "spark", viewBox: "0 0 120 32", preserveAspectRatio: "none" });
    el.append(svg("polyline", { points: "", fill: "none" }), svg("title", {}));
    return el;
  }

  // The x axis spans what the page has, from one minute up to HISTORY_S.
  function updateSpark(el, points, now, value) {
    const xs = points.filter((p) => value(p) !== null && value(p) !== undefined);
    const span = Math.min(HISTORY_S, Math.max(60, xs.length ? now - xs[0].at : 0));
    el.querySelector("title").textContent = `last ${fmt.dur(span)}`;
    el.firstChild.setAttribute("points", xs.map((p) => {
      const x = 120 - ((now - p.at) / span) * 120;
      const y = 31 - Math.max(0, Math.min(1, value(p))) * 30;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    }).join(" "));
  }

  function makeGpu() {
    const c = {
      title: h("span", { class: "gpu-name" }),
      mig: h("span", { class: "tag" }),
      util: h("span", { class: "value util" }),
      utilSpark: spark(),
      mem: h("span", { class: "value" }),
      memBar: bar(),
      memSpark: spark(),
      slices: h("tbody"),
    };
    const el = h("div", { class: "card gpu" },
      h("div", { class: "gpu-head" }, c.title, c.mig),
      h("div", { class: "metric" }, h("span", { class: "label", text: "Utilisation" }), c.util,
        c.utilSpark),
      h("div", { class: "metric" }, h("span", { class: "label", text: "Memory" }), c.mem,
        c.memSpark),
      c.memBar,
      h("table", { class: "slices" },
        h("thead", {}, h("tr", {}, h("th", { text: "Slice" }), h("th", { text: "Memory" }),
          h("th", { text: "Model" }))),
        c.slices));
    el.refs = c;
    return el;
  }

  function makeSlice() {
    const c = { profile: h("td"), mem: h("span", { class: "small" }), bar: bar(), models: h("td") };
    const row = h("tr", {}, c.profile, h("td", { class: "slice-mem" }, c.bar, c.mem), c.models);
    row.refs = c;
    return row;
  }

  function updateSlice(row, s) {
    const c = row.refs;
    setText(c.profile, s.profile || "whole GPU");
    row.title = s.uuid;
    setText(c.mem, fmt.mem(s.memory_used_bytes, s.memory_total_bytes));
    updateBar(c.bar, s.memory_used_bytes, s.memory_total_bytes);
    const names = s.models.join(",");
    if (c.models.dataset.names !== names) {
      c.models.dataset.names = names;
      c.models.replaceChildren(...(s.models.length
        ? s.models.map((n) => h("a", { href: `/ui/models/${encodeURIComponent(n)}`, text: n }))
        : [h("span", { class: "muted", text: "free" })]));
    }
  }

  function updateGpu(history, now) {
    return (el, g) => {
      const c = el.refs;
      const points = history.get(String(g.index)) || [];
      setText(c.title, `GPU ${g.index} · ${g.name}`);
      setText(c.mig, g.mig ? "MIG" : "whole");
      c.mig.className = g.mig ? "tag mig" : "tag";
      const util = g.mig ? "n/a (MIG)" : (g.sm_util_pct === null ? "n/a" : `${g.sm_util_pct}%`);
      setText(c.util, util);
      c.util.title = g.mig ? "NVML reports no utilisation while MIG is on, per GPU or per slice" : "";
      c.utilSpark.style.visibility = g.mig ? "hidden" : "visible";
      updateSpark(c.utilSpark, points, now, (p) => (p.sm_util_pct === null ? null : p.sm_util_pct / 100));
      setText(c.mem, fmt.mem(g.memory_used_bytes, g.memory_total_bytes));
      updateBar(c.memBar, g.memory_used_bytes, g.memory_total_bytes);
      updateSpark(c.memSpark, points, now, (p) => p.memory_used_bytes / g.memory_total_bytes);
      keyed(c.slices, g.slices, (s) => s.uuid, makeSlice, updateSlice);
    };
  }

  function summaryCard(label) {
    const value = h("div", { class: "big" });
    return [h("div", { class: "card stat" }, h("div", { class: "label", text: label }), value), value];
  }

  // ----- the latest evaluation run (`mig-orchestrator eval`, read from its database) -----

  const EVAL_EVERY = 15; // overview polls between two reads of the evaluation (30 s)
  const num = (x, d) => (x === null || x === undefined ? "—" : x.toFixed(d));

  function evalRows(r) {
    if (r.single) {
      const head = ["Model", "Mean score", "95% interval", "Scored", "Unparseable", "Missing"];
      const rows = r.single.rows.map((x) => [x.model, num(x.mean, 2),
        x.ci95 ? `${num(x.ci95[0], 2)}–${num(x.ci95[1], 2)}` : "—",
        String(x.scored), String(x.unparseable), String(x.missing)]);
      return [head, rows];
    }
    const head = ["Model", "Bradley–Terry", "Win rate", "Wins", "Ties", "Losses"];
    const rows = r.pairwise.rows.map((x) => [x.model, num(x.rating, 0), num(x.win_rate, 3),
      String(x.wins), String(x.ties), String(x.losses)]);
    return [head, rows];
  }

  function evalNote(r) {
    const when = new Date(r.updated * 1000).toLocaleString();
    const how = r.structured_outputs ? "structured outputs" : "prompt only";
    let text = `Run ${r.run_id} (${r.status}, ${when}): ${r.mode}, judge ${r.judge} (${how}), ` +
      `${r.questions.source.split("/").pop()}, ${r.questions.count} questions.`;
    if (r.pairwise) {
      text += ` Order flips ${r.pairwise.order_flips} of ${r.pairwise.pairs_judged}, counted as ties.`;
    }
    const failed = Object.entries(r.failed);
    if (failed.length) text += ` Failed: ${failed.map(([m, why]) => `${m} (${why})`).join("; ")}.`;
    return text;
  }

  function evaluationPanel() {
    const note = h("p", { class: "muted small" });
    const wrap = h("div", { class: "table-wrap" });
    const section = h("section", { class: "panel", id: "evaluation", hidden: true },
      h("h2", { text: "Evaluation" }), note, wrap);
    let polls = 0;
    async function refresh() {
      if (polls++ % EVAL_EVERY) return;
      const d = await api("/ui/api/evaluation");
      section.hidden = !d.db;
      if (!d.run) {
        setText(note, d.error || `No evaluation run in ${d.db} yet.`);
        wrap.replaceChildren();
        return;
      }
      setText(note, evalNote(d.run));
      if (!d.run.single && !d.run.pairwise) return wrap.replaceChildren();
      const [head, rows] = evalRows(d.run);
      wrap.replaceChildren(h("table", { class: "models eval" },
        h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))),
        h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", { text: c })))))));
    }
    return [section, refresh];
  }

  function overview() {
    crumbs([["Overview", null]]);
    const [readyCard, ready] = summaryCard("Models ready");
    const [failCard, failing] = summaryCard("Failed");
    const [gpuCard, gpuCount] = summaryCard("GPUs / slices");
    const [tpsCard, tps] = summaryCard("Generation, all models");
    const table = h("table", { class: "models" },
      h("thead", {}, h("tr", {}, MODEL_COLUMNS.map((t) => t === ACTIONS
        ? h("th", {}, h("span", { class: "sr-only", text: t })) : h("th", { text: t })))));
    const gpus = h("div", { class: "gpus" });
    const [evalSection, evalRefresh] = evaluationPanel();
    main.replaceChildren(
      // Every page has one h1; the overview's would only repeat the breadcrumb on screen.
      h("h1", { class: "sr-only", text: "Overview" }),
      h("div", { class: "summary" }, readyCard, failCard, gpuCard, tpsCard),
      h("section", { class: "panel" }, h("h2", { text: "Models" }),
        h("div", { class: "table-wrap" }, table)),
      evalSection,
      h("section", { class: "panel" }, h("h2", {}, "GPUs and slices ",
        h("span", { class: "muted small", text: "· charts: up to the last 10 minutes" })), gpus));
    const history = new Map();
    let since = 0;
    const poll = poller(async () => {
      const d = await api(`/ui/api/overview?since=${since}`);
      for (const t of d.history) {
        since = Math.max(since, t.at);
        for (const [i, p] of Object.entries(t.gpus)) {
          if (!history.has(i)) history.set(i, []);
          history.get(i).push({ at: t.at, ...p });
        }
      }
      const now = d.now || Date.now() / 1000;
      for (const points of history.values()) {
        while (points.length && points[0].at < now - HISTORY_S) points.shift();
      }
      const models = d.models;
      const nReady = models.filter((m) => m.state === "ready").length;
      const nFailed = models.filter((m) => m.state === "failed").length;
      setText(ready, `${nReady} / ${models.length}`);
      setText(failing, String(nFailed));
      failCard.classList.toggle("alert", nFailed > 0);
      setText(gpuCount, `${d.gpus.length} / ${d.gpus.reduce((n, g) => n + g.slices.length, 0)}`);
      const total = Object.values(d.stats).reduce((n, s) => n + ((s && s.generation_tps) || 0), 0);
      setText(tps, fmt.rate(total, "tok/s"));
      keyed(table, models, (m) => m.name, makeModel(poll), updateModel(d.stats));
      keyed(gpus, d.gpus, (g) => String(g.index), makeGpu, updateGpu(history, now));
      await evalRefresh();
    });
    poll.run();
  }

  // ----- one model: the student's page, and the admin's page per model -----

  function shellQuote(s) {
    return `'${s.replace(/'/g, "'\\''")}'`;
  }

  function snippets(m, needsKey) {
    const base = m.endpoint;
    const key = needsKey
      ? "export OPENAI_API_KEY=...   # your model's API key"
      : "export OPENAI_API_KEY=EMPTY  # this engine needs no key";
    const body = [
      "{",
      `    "model": ${JSON.stringify(m.served_model_name)},`,
      '    "messages": [{"role": "user", "content": "Say hello in five words."}],',
      '    "max_tokens": 64',
      "  }",
    ].join("\n");
    const curl = [
      `export OPENAI_BASE_URL=${base}`,
      key,
      "curl \"$OPENAI_BASE_URL/chat/completions\" \\",
      "  -H \"Authorization: Bearer $OPENAI_API_KEY\" \\",
      "  -H \"Content-Type: application/json\" \\",
      `  -d ${shellQuote(body)}`,
    ].join("\n");
    const python = [
      "# pip install openai; set OPENAI_API_KEY as above",
      "import os",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url=${JSON.stringify(base)}, api_key=os.environ["OPENAI_API_KEY"])`,
      "reply = client.chat.completions.create(",
      `    model=${JSON.stringify(m.served_model_name)},`,
      "    messages=[{\"role\": \"user\", \"content\": \"Say hello in five words.\"}],",
      "    max_tokens=64,",
      ")",
      "print(reply.choices[0].message.content)",
    ].join("\n");
    return [["curl", curl], ["Python (OpenAI client)", python]];
  }

  async function copy(text, pre) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // Plain http off localhost has no clipboard API: select the text for Ctrl+C instead.
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      toast("Selected: press Ctrl+C to copy");
      return;
    }
    toast("Copied");
  }

  function codeBlock(title, text) {
    const pre = h("pre", { class: "code" }, h("code", { text }));
    return h("div", { class: "snippet" },
      h("div", { class: "snippet-head" }, h("span", { text: title }),
        h("button", { type: "button", class: "btn small ghost", text: "Copy",
          onclick: () => copy(text, pre) })),
      pre);
  }

  function field(label, value) {
    return h("div", { class: "card stat" }, h("div", { class: "label", text: label }), value);
  }

  function modelPage(name, admin) {
    crumbs(admin ? [["Overview", "/ui"], [name, null]] : [[name, null]]);
    const c = {
      state: badge(),
      endpoint: h("code", { class: "endpoint" }),
      uptime: h("div", { class: "big" }),
      restarts: h("div", { class: "big" }),
      slice: h("div", { class: "big" }),
      sliceMem: h("div", { class: "muted small" }),
      reason: h("div", { class: "reason-box", hidden: true }),
      usage: h("div", { class: "grid4", id: "usage" }),
      recent: h("div", { class: "grid4", id: "recent" }),
      recentNote: h("span", { class: "muted small" }),
      connect: h("div", { class: "snippets" }),
      log: h("pre", { class: "log", tabindex: "0" }),
      follow: h("input", { type: "checkbox", checked: true, id: "follow" }),
      argv: h("pre", { class: "code" }),
      studentNote: h("div", { class: "muted small" }),
    };
    const poll = poller(tick);
    const buttons = actions(name, poll);
    const copyEndpoint = h("button", { type: "button", class: "btn small ghost", text: "Copy",
      onclick: () => copy(c.endpoint.textContent, c.endpoint) });
    main.replaceChildren(
      h("div", { class: "title-row" }, h("h1", { text: name }), c.state, h("span", { class: "spacer" }),
        buttons),
      c.studentNote,
      c.reason,
      h("div", { class: "summary" },
        field("Endpoint (OpenAI base URL)", h("div", { class: "endpoint-row" }, c.endpoint, copyEndpoint)),
        field("Uptime", c.uptime), field("Restarts", c.restarts),
        field("Slice", h("div", {}, c.slice, c.sliceMem))),
      h("div", { class: "two" },
        h("section", { class: "panel" }, h("h2", {}, "Usage ",
          h("span", { class: "muted small", text: "· since the engine started" })), c.usage,
          h("h2", {}, "Recent ", c.recentNote), c.recent),
        h("section", { class: "panel" }, h("h2", { text: "Connect" }), c.connect)),
      h("section", { class: "panel" },
        h("div", { class: "log-head" }, h("h2", { text: "Engine log" }), h("span", { class: "spacer" }),
          h("label", { class: "small" }, c.follow, " follow")),
        c.log),
    );
    if (admin) {
      main.append(h("section", { class: "panel" },
        h("details", {}, h("summary", { text: "Launch command" }), c.argv)));
    }
    const cells = (box, pairs) => {
      if (!box.children.length) {
        box.append(...pairs.map(([label]) => h("div", { class: "stat" },
          h("div", { class: "label", text: label }), h("div", { class: "big" }))));
      }
      pairs.forEach(([, value], i) => setText(box.children[i].lastChild, value));
    };
    let logNext = -1;
    let snippetKey = "";
    async function tick() {
      const [d, logs] = await Promise.all([
        api(`/ui/api/models/${encodeURIComponent(name)}`),
        api(`/ui/api/models/${encodeURIComponent(name)}/logs?after=${logNext}`),
      ]);
      const m = d.status;
      const st = d.stats || {};
      updateBadge(c.state, m.state);
      updateActions(buttons, m);
      setText(c.endpoint, m.endpoint);
      setText(c.uptime, fmt.dur(m.uptime_s));
      setText(c.restarts, String(m.restarts));
      setText(c.slice, sliceLabel(m.slice));
      setText(c.sliceMem, m.slice ? `${fmt.gib(m.slice.memory_total_bytes)} GiB` : "");
      setText(c.studentNote, [d.student && `student ${d.student}`,
        `serves ${m.served_model_name}`, m.model].filter(Boolean).join(" · "));
      const why = trouble(m);
      c.reason.hidden = !why;
      setText(c.reason, why ? `⚠ ${m.state === "failed" ? "Failed" : "Problem"}: ${why}` : "");
      cells(c.usage, [["Requests", fmt.int(st.requests)], ["Prompt tokens", fmt.int(st.prompt_tokens)],
        ["Completion tokens", fmt.int(st.generation_tokens)], ["Prefix-cache hit rate", fmt.pct(st.hit_rate)]]);
      cells(c.recent, [["Throughput", fmt.rate(st.generation_tps, "tok/s")],
        ["Requests", fmt.rate(st.requests_per_s, "req/s")],
        [`TTFT p50${st.ttft_scope === "all" ? " (all time)" : ""}`, fmt.ms(st.ttft_p50_s)],
        ["Prefix-cache hit rate", fmt.pct(st.hit_rate_recent)]]);
      setText(c.recentNote, !d.stats ? "· the engine is not serving"
        : st.window_s ? `· last ${Math.round(st.window_s)} s` : "· from the next reading on");
      const key = `${m.endpoint}|${m.served_model_name}|${d.needs_api_key}`;
      if (key !== snippetKey) {
        snippetKey = key;
        c.connect.replaceChildren(...snippets(m, d.needs_api_key).map(([t, text]) => codeBlock(t, text)));
      }
      setText(c.argv, m.argv.join(" "));
      appendLog(logs);
    }
    function appendLog(logs) {
      if (logNext !== -1 && logs.skipped) c.log.append(`… ${logs.skipped} lines not shown …\n`);
      logNext = logs.next;
      if (!logs.lines.length) return;
      c.log.append(logs.lines.join("\n") + "\n");
      c.log.normalize();
      const text = c.log.textContent;
      const lines = text.split("\n");
      if (lines.length > LOG_KEEP) c.log.textContent = lines.slice(-LOG_KEEP).join("\n");
      if (c.follow.checked) c.log.scrollTop = c.log.scrollHeight;
    }
    poll.run();
  }

  // ----- log-in -----

  function loginPage() {
    crumbs([]);
    const token = h("input", { type: "password", id: "token", name: "token", required: true,
      autocomplete: "off", placeholder: "paste your token" });
    const error = h("p", { class: "error", id: "login-error", role: "alert" });
    const submit = async (ev) => {
      ev.preventDefault();
      setText(error, "");
      try {
        await api("/ui/api/login", { method: "POST", body: { token: token.value }, quiet: true });
        location.assign("/ui");
      } catch (e) {
        setText(error, e.message);
        token.select();
      }
    };
    main.replaceChildren(h("section", { class: "panel login" },
      h("h1", { text: "Log in" }),
      h("p", { class: "muted", text: "Paste the admin token, or the token you were given for your model. " +
        "It is checked by the daemon and kept there: the browser only holds a session cookie." }),
      h("form", { onsubmit: submit }, token, h("button", { class: "btn", type: "submit", text: "Log in" })),
      error));
    token.focus();
  }

  // ----- usage: the admin's usage page, a student's usage on their model's page -----

  const when = (t) => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
  const tokens = (r) => fmt.int(r.prompt_tokens + r.completion_tokens);

  // A table rebuilt on each poll: [heading, cell(row)] columns; numbers right-aligned.
  function dataTable(label, columns, rows, empty) {
    if (!rows.length) return h("p", { class: "muted small", text: empty });
    return h("div", { class: "table-wrap" }, h("table", { class: "usage", "aria-label": label },
      h("thead", {}, h("tr", {}, columns.map(([t]) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, rows.map((r) => h("tr", {}, columns.map(([, cell]) => {
        const v = cell(r);
        return h("td", { class: typeof v === "number" ? "num" : null, text: String(v) });
      }))))));
  }

  function quotaText(q) {
    if (!q) return "none";
    if (!q.open) return `${fmt.int(q.tokens)} / ${q.period} (outside the term)`;
    return `${fmt.int(q.left)} left of ${fmt.int(q.tokens)} / ${q.period}`;
  }

  const KEY_COLUMNS = [["Owner", (k) => k.owner], ["Key", (k) => k.hint],
    ["Models", (k) => k.models.join(", ") || "none"], ["RPM", (k) => k.rpm ?? "—"],
    ["TPM", (k) => k.tpm ?? "—"], ["Concurrent", (k) => k.max_concurrent ?? "—"],
    ["max_tokens", (k) => k.max_tokens ?? "—"], ["Quota", (k) => quotaText(k.quota)]];
  const REQUEST_COLUMNS = [["Started (UTC)", (r) => when(r.started_at)], ["Owner", (r) => r.owner],
    ["Model", (r) => r.model], ["Route", (r) => r.route || "—"], ["Status", (r) => r.status ?? r.state],
    ["Tokens in/out", (r) => `${r.prompt_tokens} / ${r.completion_tokens}`],
    ["TTFT", (r) => fmt.ms(r.ttft_s)], ["Duration", (r) => fmt.ms(r.duration_s)],
    ["Error", (r) => r.error || ""]];

  function usagePage() {
    crumbs([["Overview", "/ui"], ["Usage", null]]);
    const [reqCard, reqs] = summaryCard("Requests");
    const [promptCard, prompt] = summaryCard("Prompt tokens");
    const [complCard, compl] = summaryCard("Completion tokens");
    const [errCard, errs] = summaryCard("Errors");
    reqs.id = "usage-total-requests";
    prompt.id = "usage-total-prompt";
    compl.id = "usage-total-completion";
    errs.id = "usage-total-errors";
    const boxes = ["totals", "daily", "keys", "slowest", "failing"].map((id) => h("div", { id: `usage-${id}` }));
    const titles = ["Per owner and model", "Per day (last 14 days)", "Keys: limits and what is left",
      "Slowest requests (last 7 days)", "Latest failed requests"];
    main.replaceChildren(h("h1", { text: "Usage" }),
      h("div", { class: "summary" }, reqCard, promptCard, complCard, errCard),
      ...boxes.map((box, i) => h("section", { class: "panel" }, h("h2", { text: titles[i] }), box)));
    const poll = poller(async () => {
      const d = await api("/ui/api/usage");
      if (!d.enabled) {
        boxes[0].replaceChildren(h("p", { class: "muted", text: "No usage yet: [gateway] keys is off or nothing was served." }));
        return;
      }
      const sum = (f) => d.totals.reduce((n, r) => n + r[f], 0);
      setText(reqs, fmt.int(sum("requests")));
      setText(prompt, fmt.int(sum("prompt_tokens")));
      setText(compl, fmt.int(sum("completion_tokens")));
      setText(errs, fmt.int(sum("errors")));
      const usageCols = [["Owner", (r) => r.group.owner], ["Model", (r) => r.group.model],
        ["Requests", (r) => r.requests], ["Errors", (r) => r.errors], ["Lost", (r) => r.lost],
        ["Prompt", (r) => r.prompt_tokens], ["Completion", (r) => r.completion_tokens],
        ["Mean TTFT", (r) => fmt.ms(r.mean_ttft_s)], ["Mean duration", (r) => fmt.ms(r.mean_duration_s)]];
      boxes[0].replaceChildren(dataTable("usage per owner and model", usageCols, d.totals, "No requests yet."));
      boxes[1].replaceChildren(dataTable("usage per day", [["Day", (r) => r.group.day], ...usageCols.slice(0, 4),
        ["Tokens", tokens]], [...d.daily].reverse(), "No requests in the last 14 days."));
      boxes[2].replaceChildren(dataTable("keys", KEY_COLUMNS, d.keys, "No keys."));
      boxes[3].replaceChildren(dataTable("slowest requests", REQUEST_COLUMNS, d.slowest, "No requests this week."));
      boxes[4].replaceChildren(dataTable("failed requests", REQUEST_COLUMNS, d.failing, "No failed requests."));
    });
    poll.run();
  }

  // A student's own usage below their model's page: totals, today's, their keys, last requests.
  function ownUsage(name) {
    const box = h("div", { id: "own-usage" });
    main.append(h("section", { class: "panel" }, h("h2", {}, "Your usage through the gateway ",
      h("span", { class: "muted small", text: "· all your models" })), box));
    const cols = [["Model", (r) => r.group.model], ["Requests", (r) => r.requests],
      ["Errors", (r) => r.errors], ["Prompt", (r) => r.prompt_tokens], ["Completion", (r) => r.completion_tokens]];
    const poll = poller(async () => {
      const d = await api(`/ui/api/models/${encodeURIComponent(name)}/usage`).catch((e) => {
        if (e.status === 404) return { enabled: false };
        throw e;
      });
      if (!d.enabled) {
        box.replaceChildren(h("p", { class: "muted small", text: "No gateway usage is recorded for this model." }));
        return;
      }
      box.replaceChildren(h("h3", { text: "Today (UTC)" }), dataTable("today", cols, d.today, "Nothing today."),
        h("h3", { text: "In all" }), dataTable("in all", cols, d.totals, "No requests yet."),
        h("h3", { text: "Your keys: models and limits left" }), dataTable("your keys", KEY_COLUMNS, d.keys, "No key."),
        h("h3", { text: "Your last requests" }), dataTable("your last requests", REQUEST_COLUMNS, d.requests, "None yet."));
    });
    poll.run();
  }

  // ----- chrome around every view -----

  function crumbs(items) {
    document.getElementById("crumbs").replaceChildren(...items.map(([label, href]) =>
      href ? h("a", { href, text: label }) : h("span", { text: label })));
    document.title = items.length ? `${items[items.length - 1][0]} · mig-orchestrator` : "mig-orchestrator";
  }

  async function start() {
    const path = location.pathname.replace(/\/+$/, "");
    const s = await api("/ui/api/session", { quiet: true }).catch((e) => {
      if (e.status === 401) return null;
      throw e;
    });
    if (!s) {
      if (path !== "/ui/login") location.assign("/ui/login");
      else loginPage();
      return;
    }
    csrf = s.csrf;
    const who = document.getElementById("who");
    who.replaceChildren(h("span", { class: s.role === "admin" ? "role admin" : "role", text: s.role }));
    if (s.model) who.append(h("span", { text: s.model }));
    const logout = document.getElementById("logout");
    logout.hidden = !s.auth;
    logout.addEventListener("click", async () => {
      await api("/ui/api/logout", { method: "POST", quiet: true }).catch(() => null);
      location.assign("/ui/login");
    });
    const model = path.match(/^\/ui\/models\/([^/]+)$/);
    if (s.role === "admin") who.append(h("a", { href: "/ui/usage", class: "usage-link", text: "Usage" }));
    if (model) {
      modelPage(decodeURIComponent(model[1]), s.role === "admin");
      ownUsage(decodeURIComponent(model[1]));
    } else if (s.role === "admin" && path === "/ui/usage") usagePage();
    else if (s.role === "admin") {
      if (path === "/ui/login") history.replaceState(null, "", "/ui");
      overview();
    } else location.assign(`/ui/models/${encodeURIComponent(s.model)}`);
  }

  start().catch((e) => {
    updated.classList.add("error");
    updated.textContent = `cannot reach the daemon: ${e.message}`;
  });
})();
