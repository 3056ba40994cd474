// The export builder: form fields → the export URL (as routes/pages.py Builder does without JavaScript), a live
// preview through the export itself, copyable snippets, Download as a plain link, and Run as job.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const E = Exporter;
  const form = document.getElementById("builder");
  const dataset = form.dataset.dataset;
  const auth = form.dataset.auth === "true";
  // The default column set, in its order: exporting exactly these needs no `columns=`.
  const allNames = JSON.parse(document.getElementById("columns-data").textContent);
  const operators = JSON.parse(document.getElementById("operators-data").textContent);
  const $ = (id) => document.getElementById(id);
  const download = $("download");
  $("download-submit").hidden = true;

  // --- form → export --------------------------------------------------------------------------------------------

  function checkedColumns() {
    return [...form.querySelectorAll('input[name="col"]')].filter((box) => box.checked).map((box) => box.value);
  }
  function filterRows() { return [...form.querySelectorAll(".filter-row")]; }

  function state() {
    const format = form.querySelector('input[name="format"]:checked').value;
    return {
      columns: checkedColumns(),
      filters: filterRows().map((row) => ({
        row, column: row.querySelector(".f-col").value, op: row.querySelector(".f-op").value,
        value: row.querySelector(".f-val").value,
      })).filter((f) => f.column && f.op),
      orderBy: $("order-by").value, orderDir: $("order-dir").value, limit: $("limit").value.trim(), format,
      gzip: $("gzip").checked, header: $("header").checked, delimiter: $("delimiter").value, nullText: $("null").value,
      bom: $("bom").checked,
    };
  }

  // The export's query parameters; `csv` false leaves out the CSV options (the preview is NDJSON).
  function params(s, csv) {
    const p = [];
    if (s.columns.join(",") !== allNames.join(",")) p.push(["columns", s.columns.join(",")]);
    for (const f of s.filters) p.push([`${f.column}__${f.op}`, f.value]);
    if (s.orderBy) p.push(["order", (s.orderDir === "desc" ? "-" : "") + s.orderBy]);
    if (s.limit) p.push(["limit", s.limit]);
    if (csv && s.format === "csv") {
      if (!s.header) p.push(["header", "false"]);
      if (s.delimiter !== ",") p.push(["delimiter", s.delimiter]);
      if (s.nullText) p.push(["null", s.nullText]);
      if (s.bom) p.push(["bom", "true"]);
    }
    return p;
  }
  function filename(s) { return `${dataset}.${s.format}${s.gzip ? ".gz" : ""}`; }
  function exportPath(s) {
    const q = E.query(params(s, true));
    return `/exports/${E.quote(filename(s))}` + (q ? `?${q}` : "");
  }

  function snippets(s, url) {
    const file = filename(s);
    const py = JSON.stringify(url);
    const sql = `'${url.replace(/'/g, "''")}'`;
    const curlAuth = auth ? ' -H "Authorization: Bearer $EXPORTER_TOKEN"' : "";
    const pyAuth = auth ? ', storage_options={"Authorization": "Bearer " + os.environ["EXPORTER_TOKEN"]}' : "";
    const gz = s.gzip ? ', compression="gzip"' : "";
    let pandas; let duck;
    if (s.format === "csv") {
      const sep = s.delimiter !== "," ? `, sep=${JSON.stringify(decodeURIComponent(s.delimiter))}` : "";
      const header = s.header ? "" : ", header=None";
      const na = s.nullText ? `, na_values=[${JSON.stringify(s.nullText)}], keep_default_na=False` : "";
      pandas = `pd.read_csv(${py}${sep}${header}${na}${gz}${pyAuth})`;
      const dsep = s.delimiter !== "," ? `, delim='${decodeURIComponent(s.delimiter)}'` : "";
      duck = `SELECT * FROM read_csv(${sql}${dsep}${s.header ? "" : ", header=false"}${s.nullText ? `, nullstr='${s.nullText.replace(/'/g, "''")}'` : ""}${s.gzip ? ", compression='gzip'" : ""});`;
    } else {
      pandas = `pd.read_json(${py}, lines=True${gz}${pyAuth})`;
      duck = `SELECT * FROM read_json(${sql}, format='newline_delimited'${s.gzip ? ", compression='gzip'" : ""});`;
    }
    const secret = auth ? "CREATE SECRET exporter (TYPE http, EXTRA_HTTP_HEADERS MAP {'Authorization': 'Bearer YOUR_KEY'}); " : "";
    return {
      curl: `curl -fsS${curlAuth} -o ${file} '${url}'`,
      pandas: `${auth ? "import os; " : ""}import pandas as pd; df = ${pandas}`,
      duckdb: secret + duck,
    };
  }

  // --- errors next to their fields ------------------------------------------------------------------------------

  function clearErrors() {
    for (const el of form.querySelectorAll(".error")) { el.hidden = true; el.textContent = ""; }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }
  function showError(error) {
    let slot = null; let field = null;
    const p = error.parameter || "";
    const match = /^(.*)__([a-z]+)$/.exec(p);
    if (match) {
      const row = state().filters.find((f) => f.column === match[1] && f.op === match[2]);
      if (row) { slot = row.row.querySelector(".f-error"); field = row.row.querySelector(".f-val"); }
    } else if (["columns", "order", "limit", "delimiter", "header", "null", "bom"].includes(p)) {
      slot = $(`error-${p}`);
      field = { order: $("order-by"), limit: $("limit"), delimiter: $("delimiter"), null: $("null") }[p] || null;
    } else if (p && allNames.includes(p)) {
      const row = state().filters.find((f) => f.column === p && f.op === "eq");
      if (row) { slot = row.row.querySelector(".f-error"); field = row.row.querySelector(".f-val"); }
    }
    slot = slot || $("error-form");
    slot.textContent = error.message;
    slot.hidden = false;
    if (field) { field.setAttribute("aria-invalid", "true"); field.setAttribute("aria-describedby", slot.id || ""); }
  }

  // --- operators valid for the chosen column --------------------------------------------------------------------

  function syncOperators(row) {
    const column = row.querySelector(".f-col").value;
    const select = row.querySelector(".f-op");
    const valid = column ? operators[column] || [] : Object.keys(operators).length ? ["eq"] : [];
    for (const option of select.options) option.hidden = column ? !valid.includes(option.value) : false;
    if (column && !valid.includes(select.value)) select.value = valid[0] || "";
  }

  // --- preview, URL and snippets --------------------------------------------------------------------------------

  let controller = null; let timer = null;
  const status = $("preview-status");
  const table = $("preview-table");

  function renderPreview(names, rows) {
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
    const head = table.tHead.insertRow();
    for (const name of names) { const th = document.createElement("th"); th.scope = "col"; th.textContent = name; head.append(th); }
    for (const row of rows) {
      const tr = table.tBodies[0].insertRow();
      for (const name of names) {
        const value = row[name];
        tr.insertCell().textContent = value === null ? "NULL" : typeof value === "object" ? JSON.stringify(value) : String(value);
      }
    }
  }

  async function preview(s) {
    if (controller) controller.abort();
    controller = new AbortController();
    const p = params(s, false).filter(([k]) => k !== "limit");
    const limit = s.limit && /^\d+$/.test(s.limit) ? Math.min(Number(s.limit), 20) : 20;
    if (s.limit && !/^\d+$/.test(s.limit)) p.push(["limit", s.limit]);  // let the server say what is wrong
    else p.push(["limit", String(limit)]);
    status.textContent = "Loading the preview…";
    form.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(`/exports/${E.quote(dataset)}.ndjson?${E.query(p)}`, { signal: controller.signal });
      if (!response.ok) {
        const error = await E.apiError(response);
        showError(error);
        status.textContent = "No preview: fix the field marked above.";
        renderPreview([], []);
        return;
      }
      const text = await response.text();
      // Numbers keep the digits the server wrote (12.50 stays 12.50, big integers stay exact).
      const exact = (key, value, context) => (typeof value === "number" && context && context.source ? context.source : value);
      const rows = text.split("\n").filter((line) => line).map((line) => JSON.parse(line, exact));
      renderPreview(s.columns, rows);
      status.textContent = rows.length ? `Showing the first ${E.count(rows.length, "row")}.` : "No rows match these filters.";
      table.dataset.rows = String(rows.length);
    } catch (e) {
      if (e.name !== "AbortError") status.textContent = "The preview could not be loaded.";
    } finally {
      form.removeAttribute("aria-busy");
    }
  }

  function pageUrl(extra) {
    // The builder's state, as the no-JavaScript form would send it (so a reload or a shared link restores it),
    // without the empty filter rows.
    const fields = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (!["f_col", "f_op", "f_val", "download"].includes(k)) fields.append(k, v);
    for (const f of state().filters) { fields.append("f_col", f.column); fields.append("f_op", f.op); fields.append("f_val", f.value); }
    for (const [k, v] of Object.entries(extra || {})) fields.set(k, v);
    return `${location.pathname}?${fields.toString()}`;
  }

  function refresh() {
    const s = state();
    clearErrors();
    const path = exportPath(s);
    const absolute = location.origin + path;
    download.href = path;
    $("url").value = absolute;
    const snip = snippets(s, absolute);
    $("snippet-curl").value = snip.curl;
    $("snippet-pandas").value = snip.pandas;
    $("snippet-duckdb").value = snip.duckdb;
    $("csv-options").hidden = s.format !== "csv";
    const job = new URLSearchParams(location.search);
    history.replaceState(null, "", pageUrl(job.get("job") ? { job: job.get("job"), last_event_id: job.get("last_event_id") || "" } : {}));
    if (!s.columns.length) {
      showError({ message: "Choose at least one column.", parameter: "columns" });
      status.textContent = "No preview: choose at least one column.";
      download.setAttribute("aria-disabled", "true");
      return;
    }
    download.removeAttribute("aria-disabled");
    status.textContent = "Loading the preview…";  // at once, so an older preview is never taken for this one
    clearTimeout(timer);
    timer = setTimeout(() => preview(s), 250);
  }

  // --- run as job -------------------------------------------------------------------------------------------------

  const jobSection = $("job");
  let source = null; let jobId = null;

  const view = {
    update(job, progress, total) {
      const pct = E.percent(job, total);
      const bar = $("job-bar");
      jobSection.dataset.rows = String(job.rows);
      jobSection.dataset.state = job.state;
      if (pct === null) bar.removeAttribute("value"); else bar.value = pct;
      $("job-percent").textContent = pct === null ? "" : `${pct}%`;
      $("job-state").textContent = job.state === "queued" && progress && progress.position
        ? `Queued (number ${progress.position} in line)` : job.state === "queued" ? "Queued" : "Running";
      const parts = [total ? `${E.count(job.rows)} of about ${E.count(total, "row")}` : E.count(job.rows, "row"), E.bytes(job.bytes)];
      if (progress && progress.rows_per_second) parts.push(`${E.count(progress.rows_per_second)} rows/s`);
      if (progress && progress.elapsed_seconds) parts.push(E.seconds(progress.elapsed_seconds));
      $("job-stats").textContent = parts.filter(Boolean).join(" · ");
      $("job-cancel").hidden = false;
      $("job-result").hidden = true;
    },
    finish(job) {
      const bar = $("job-bar");
      $("job-cancel").hidden = true;
      $("job-state").textContent = job.state === "succeeded" ? "Done" : job.state === "failed"
        ? `Failed: ${job.error ? job.error.message : ""}` : job.state === "cancelled" ? "Cancelled" : "Expired: the file was deleted";
      if (job.state === "succeeded") {
        bar.value = 100;
        $("job-percent").textContent = "100%";
        const elapsed = job.started_at && job.finished_at ? (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000 : null;
        $("job-stats").textContent = [E.count(job.result.rows, "row"), E.bytes(job.result.size), elapsed !== null ? E.seconds(elapsed) : ""].filter(Boolean).join(" · ");
        $("job-download").href = job.result.url;
        $("job-download").textContent = `Download ${job.result.filename}`;
        $("job-sha").textContent = job.result.sha256;
        $("job-result").hidden = false;
      } else {
        if (bar.value === undefined || !bar.hasAttribute("value")) bar.value = 0;
        $("job-percent").textContent = "";
      }
      jobSection.dataset.state = job.state;
    },
  };

  function follow(job, lastEventId) {
    jobId = job.id;
    jobSection.hidden = false;
    jobSection.dataset.state = job.state;
    $("job-error").hidden = true;
    $("job-title").textContent = `Job ${job.dataset}.${job.format}`;
    if (source) source.close();
    const remember = (id) => history.replaceState(null, "", pageUrl({ job: job.id, last_event_id: id }));
    remember(lastEventId || "");
    view.update(job, null, null);
    source = E.watchJob(job, view, lastEventId, remember);
  }

  $("run-job").addEventListener("click", async () => {
    const s = state();
    clearErrors();
    const body = { dataset, format: s.format + (s.gzip ? ".gz" : ""), params: params(s, true) };
    const response = await fetch("/jobs", {
      method: "POST", headers: E.csrfHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    if (!response.ok) {
      const error = await E.apiError(response);
      showError(error);
      jobSection.hidden = false;
      $("job-error").textContent = error.message;
      $("job-error").hidden = false;
      return;
    }
    follow(await response.json(), null);
  });

  $("job-cancel").addEventListener("click", async () => {
    if (!jobId) return;
    try {
      view.finish(await E.cancelJob(jobId));
      if (source) source.close();
    } catch (error) {
      $("job-error").textContent = error.message;
      $("job-error").hidden = false;
    }
  });

  // --- wiring -----------------------------------------------------------------------------------------------------

  for (const row of filterRows()) syncOperators(row);
  form.addEventListener("input", refresh);
  form.addEventListener("change", (event) => {
    const row = event.target.closest(".filter-row");
    if (row && event.target.classList.contains("f-col")) syncOperators(row);
    refresh();
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); location.assign(download.href); });
  $("columns-all").addEventListener("click", () => { for (const b of form.querySelectorAll('input[name="col"]')) b.checked = true; refresh(); });
  $("columns-none").addEventListener("click", () => { for (const b of form.querySelectorAll('input[name="col"]')) b.checked = false; refresh(); });
  const addFilter = $("add-filter");
  if (addFilter) addFilter.addEventListener("click", () => {
    const rows = filterRows();
    const copy = rows[rows.length - 1].cloneNode(true);
    const n = rows.length + 1;
    copy.dataset.row = String(n);
    for (const el of copy.querySelectorAll("[id]")) el.id = el.id.replace(/-\d+$/, `-${n}`);
    for (const label of copy.querySelectorAll("label")) label.htmlFor = label.htmlFor.replace(/-\d+$/, `-${n}`);
    copy.querySelector(".f-col").value = "";
    copy.querySelector(".f-val").value = "";
    $("filter-rows").append(copy);
    syncOperators(copy);
    copy.querySelector(".f-col").focus();
  });
  // Column order is the checkboxes' order: the arrows move one up or down (and keep the focus on the arrow).
  form.querySelector("ul.columns").addEventListener("click", (event) => {
    const button = event.target.closest("button.move-up, button.move-down");
    if (!button) return;
    const item = button.closest("li");
    if (button.classList.contains("move-up") && item.previousElementSibling) item.previousElementSibling.before(item);
    else if (button.classList.contains("move-down") && item.nextElementSibling) item.nextElementSibling.after(item);
    button.focus();
    refresh();
  });
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const input = $(button.dataset.copy);
      input.select();
      try { await navigator.clipboard.writeText(input.value); } catch (e) { document.execCommand("copy"); }
      $("copied").textContent = "Copied.";
    });
  }

  refresh();
  const resumed = new URLSearchParams(location.search);
  if (resumed.get("job")) {
    fetch(`/jobs/${E.quote(resumed.get("job"))}`).then(async (response) => {
      if (response.ok) follow(await response.json(), resumed.get("last_event_id") || null);
    });
  }
});
