// The jobs page: live progress for queued and running jobs, and their Cancel buttons.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const E = Exporter;
  for (const row of document.querySelectorAll("tr[data-job]")) {
    const job = JSON.parse(row.dataset.job);
    const bar = row.querySelector("progress");
    const cancel = row.querySelector("button.cancel");
    const view = {
      update(current, progress, total) {
        const pct = E.percent(current, total);
        if (pct === null) bar.removeAttribute("value"); else bar.value = pct;
        row.querySelector(".state").textContent = current.state;
        row.querySelector(".rows").textContent = E.count(current.rows);
        row.querySelector(".size").textContent = E.bytes(current.bytes);
      },
      finish(current) {
        row.querySelector(".state").textContent = current.state + (current.error ? `: ${current.error.message}` : "");
        row.querySelector(".rows").textContent = E.count(current.rows);
        row.querySelector(".size").textContent = E.bytes(current.bytes);
        bar.value = current.state === "succeeded" ? 100 : 0;
        if (cancel) cancel.remove();
        if (current.result && !row.querySelector("a.button")) {
          const link = document.createElement("a");
          link.className = "button";
          link.href = current.result.url;
          link.textContent = "Download";
          row.querySelector(".actions-cell").prepend(link);
        }
      },
    };
    if (cancel) {
      cancel.addEventListener("click", async () => {
        try { view.finish(await E.cancelJob(job.id)); } catch (error) {
          const slot = document.getElementById("jobs-error");
          slot.textContent = error.message;
          slot.hidden = false;
        }
      });
    }
    if (!E.TERMINAL.includes(job.state)) E.watchJob(job, view, null, () => {});
  }
});
