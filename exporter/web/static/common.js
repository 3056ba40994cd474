// Shared by every page: numbers for people, the CSRF header, API error messages, and following a job's events.
"use strict";

const Exporter = (() => {
  const TERMINAL = ["succeeded", "failed", "cancelled", "expired"];
  const CSV_OPTIONS = ["header", "delimiter", "null", "bom"];

  function count(n, unit) {
    if (n === null || n === undefined) return "unknown";
    const text = Math.round(n).toLocaleString("en-US");
    return unit ? `${text} ${unit}${n === 1 ? "" : "s"}` : text;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "";
    let size = n;
    for (const unit of ["B", "kB", "MB", "GB", "TB"]) {
      if (size < 1000 || unit === "TB") return unit === "B" ? `${Math.floor(size)} B` : `${size.toFixed(1)} ${unit}`;
      size /= 1000;
    }
    return "";
  }
  function seconds(s) { return s === null || s === undefined ? "" : `${s.toFixed(1)} s`; }

  function csrfHeaders(extra) {
    const token = document.body.dataset.csrf;
    return Object.assign(token ? { "X-CSRF-Token": token } : {}, extra || {});
  }

  // The API's JSON error as {message, parameter}; never the raw body.
  async function apiError(response) {
    try {
      const body = await response.json();
      if (body && body.error) return { message: body.error.message, parameter: body.error.parameter || null };
    } catch (e) { /* not JSON */ }
    if (response.status === 401) return { message: "Your session has ended: sign in again.", parameter: null };
    return { message: `The server answered ${response.status} ${response.statusText}.`, parameter: null };
  }

  // RFC 3986 unreserved characters only, as Python's urllib.parse.quote(value, safe="") writes them.
  function quote(value) {
    return encodeURIComponent(value).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  }
  // A query value keeps its commas and colons (columns=id,amount), as routes/pages.py export_url writes it.
  function quoteValue(value) { return quote(value).replace(/%2C/g, ",").replace(/%3A/g, ":"); }
  function query(params) { return params.map(([k, v]) => `${quoteValue(k)}=${quoteValue(v)}`).join("&"); }

  // Follow a job's event stream and keep `view` up to date. `view` has update(job, progress, total) and
  // finish(job). onEventId(id) is told each event id (to survive a reload). Returns the EventSource.
  function watchJob(job, view, lastEventId, onEventId) {
    const url = job.events_url + (lastEventId ? `?last_event_id=${encodeURIComponent(lastEventId)}` : "");
    const source = new EventSource(url);
    let total = null;
    let progress = null;
    let current = job;
    const estimate = (j) => {
      const params = (j.params || []).filter(([k]) => !CSV_OPTIONS.includes(k));
      fetch(`/datasets/${quote(j.dataset)}/estimate?${query(params)}`)
        .then((r) => (r.ok ? r.json() : null))
        .then((body) => { if (body && body.rows !== null) { total = body.rows; view.update(current, progress, total); } })
        .catch(() => {});
    };
    estimate(job);
    const seen = (event) => { if (event.lastEventId) onEventId(event.lastEventId); };
    source.addEventListener("state", (event) => {
      seen(event);
      current = JSON.parse(event.data);
      if (TERMINAL.includes(current.state)) { view.finish(current); source.close(); return; }
      view.update(current, progress, total);
    });
    source.addEventListener("progress", (event) => {
      seen(event);
      progress = JSON.parse(event.data);
      current = Object.assign({}, current, { rows: progress.rows, bytes: progress.bytes });
      view.update(current, progress, total);
    });
    for (const kind of TERMINAL) {
      source.addEventListener(kind, (event) => { seen(event); view.finish(JSON.parse(event.data)); source.close(); });
    }
    // On a dropped connection EventSource reconnects by itself, sending Last-Event-ID.
    return source;
  }

  function percent(job, total) {
    if (job.state === "succeeded") return 100;
    if (!total) return null;
    return Math.min(99, Math.floor((100 * job.rows) / total));
  }

  async function cancelJob(id) {
    const response = await fetch(`/jobs/${quote(id)}`, { method: "DELETE", headers: csrfHeaders() });
    if (!response.ok) throw await apiError(response);
    return response.json();
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const el of document.querySelectorAll(".js-only")) el.hidden = false;
  });

  return { TERMINAL, CSV_OPTIONS, count, bytes, seconds, csrfHeaders, apiError, quote, query, watchJob, percent, cancelJob };
})();
