"""The pages' only stylesheet and script, inlined: the catalog must render on a closed network,
so nothing is fetched from anywhere but the catalog itself.

The Content-Security-Policy allows exactly these two blocks (by hash) and requests to the page's
own origin, so a name that slipped past escaping still could not run, load or send anything.

The script does two things:

- a tooltip: hovering or focusing any mark with `data-key` shows its `<title>` text beside the
  pointer (the browser's own title tooltip is slow and cannot be styled);
- auto-refresh: every `data-refresh-ms` it fetches the page again and swaps in its `#live`
  element. The hovered mark is found again by its `data-key` and its tooltip re-shown with the
  new text, so a refresh never drops what the reader is looking at. When a fetch fails the page
  keeps its last content and says since when it is stale.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["CSP", "SCRIPT", "STYLE"]

STYLE = """
:root { color-scheme: light; --ink: #1d2733; --muted: #5b6b7c; --line: #d5dde6;
  --band: #2f855a; --band-hot: #276749; --gap: #c53030; --backup: #2b6cb0; --now: #805ad5; }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--ink); margin: 0 24px 24px; }
header { display: flex; align-items: baseline; gap: 18px; flex-wrap: wrap; }
h1 { font-size: 20px; margin: 16px 0 4px; }
a { color: var(--backup); }
.muted, .lane-note { color: var(--muted); fill: var(--muted); }
table { border-collapse: collapse; margin-top: 12px; }
th, td { text-align: left; padding: 5px 12px 5px 0; border-bottom: 1px solid var(--line); }
td.num { text-align: right; }
.lag { font-weight: 600; }
.lag.ok { color: var(--band); } .lag.warn { color: #b7791f; } .lag.bad { color: var(--gap); }
#timeline { width: 100%; max-width: 1200px; height: auto; display: block; margin: 10px 0;
  font-size: 11px; }
#timeline .grid { stroke: var(--line); stroke-width: 1; }
#timeline .axis text { fill: var(--muted); }
#timeline .lane-label { font-weight: 600; font-size: 12px; fill: var(--ink); }
#timeline .coverage { stroke: #a0aec0; stroke-width: 2; }
#timeline .window { fill: var(--band); fill-opacity: 0.75; }
#timeline .unprotected { fill: var(--gap); fill-opacity: 0.18; stroke: var(--gap);
  stroke-dasharray: 3 3; }
#timeline .window.hot, #timeline .window:focus { fill: var(--band-hot); fill-opacity: 1; }
#timeline .backup path { fill: var(--backup); stroke: #fff; stroke-width: 1.5; }
#timeline .gap line { stroke: var(--gap); stroke-width: 3; }
#timeline .gap path, #timeline .gap text { fill: var(--gap); }
#timeline .branch path { fill: none; stroke: #a0aec0; stroke-width: 2; stroke-dasharray: 4 3; }
#timeline .branch circle { fill: #a0aec0; }
#timeline .now line { stroke: var(--now); stroke-width: 1.5; stroke-dasharray: 5 4; }
#timeline .now text { fill: var(--now); font-weight: 600; }
#timeline .hot path { stroke: var(--ink); }
.legend span { margin-right: 16px; }
.swatch { display: inline-block; width: 14px; height: 10px; margin-right: 4px; }
.swatch.window { background: var(--band); } .swatch.gap { background: var(--gap); }
.swatch.backup { background: var(--backup); transform: rotate(45deg) scale(0.7); }
.swatch.now { border-left: 2px dashed var(--now); width: 0; }
#tip { position: fixed; z-index: 10; max-width: 460px; padding: 6px 9px; border-radius: 4px;
  background: #1d2733; color: #fff; font-size: 12px; white-space: pre-line; pointer-events: none; }
#status { font-size: 12px; }
#status.stale { color: var(--gap); }
"""

SCRIPT = """
(() => {
  "use strict";
  const tip = document.getElementById("tip");
  const status = document.getElementById("status");
  const every = Number(document.body.dataset.refreshMs) || 0;
  let hovered = null;
  let pointer = { x: 0, y: 0 };

  function titleOf(el) {
    const title = Array.from(el.children).find((c) => c.tagName.toLowerCase() === "title");
    return title ? title.textContent : "";
  }
  function place() {
    const pad = 14;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let x = pointer.x + pad, y = pointer.y + pad;
    if (x + w > window.innerWidth) x = Math.max(0, pointer.x - w - pad);
    if (y + h > window.innerHeight) y = Math.max(0, pointer.y - h - pad);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function show(el) {
    for (const old of document.querySelectorAll(".hot")) old.classList.remove("hot");
    hovered = el.dataset.key;
    el.classList.add("hot");
    tip.textContent = titleOf(el);
    tip.dataset.key = hovered;
    tip.hidden = false;
    place();
  }
  function hide() {
    for (const old of document.querySelectorAll(".hot")) old.classList.remove("hot");
    hovered = null;
    tip.hidden = true;
    delete tip.dataset.key;
  }
  function markAt(target) {
    const el = target instanceof Element ? target.closest("[data-key]") : null;
    return el && el.id !== "live" && titleOf(el) ? el : null;
  }
  document.addEventListener("mousemove", (event) => {
    pointer = { x: event.clientX, y: event.clientY };
    const el = markAt(event.target);
    if (!el) { if (hovered) hide(); return; }
    if (el.dataset.key !== hovered) show(el); else place();
  });
  document.addEventListener("focusin", (event) => {
    const el = markAt(event.target);
    if (!el) return;
    const box = el.getBoundingClientRect();
    pointer = { x: box.left + box.width / 2, y: box.bottom };
    show(el);
  });
  document.addEventListener("focusout", hide);

  async function refresh() {
    try {
      const response = await fetch(window.location.href, {
        cache: "no-store", headers: { "Accept": "text/html" },
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      const next = fresh.getElementById("live");
      const live = document.getElementById("live");
      if (!next || !live) throw new Error("the page has no #live section");
      live.replaceWith(document.adoptNode(next));
      const again = hovered && document.querySelector('[data-key="' + CSS.escape(hovered) + '"]');
      if (again) show(again); else if (hovered) hide();
      status.classList.remove("stale");
      status.textContent = "live · refreshed " + new Date().toISOString().slice(11, 19) + "Z";
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    } catch (error) {
      status.classList.add("stale");
      if (!status.dataset.staleSince) status.dataset.staleSince = new Date().toISOString();
      status.textContent = "stale since " + status.dataset.staleSince.slice(11, 19) +
        "Z (" + error.message + ")";
      return;
    }
    delete status.dataset.staleSince;
  }
  async function loop() {
    if (!document.hidden) await refresh();
    setTimeout(loop, every);
  }
  if (every > 0) setTimeout(loop, every);
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = "; ".join(
    (
        "default-src 'none'",
        f"script-src {_sha256(SCRIPT)}",
        f"style-src {_sha256(STYLE)}",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""The pages' Content-Security-Policy: these inline blocks and same-origin fetches, nothing else."""
