"""report.html: one page to explore an evaluation — the summary tables, every image, every method's map.

The page is one file with no server and no network: CSS and vanilla JavaScript inline, the data as one inline
JSON blob (every `<` escaped as `\\u003c`, so no string in it can close the script element), the figures
(grid.png, curves.png, ...) as base64 PNGs. It holds:
  1. the summary tables (Table 2, Table 4 where given): mean ± std, best value bold, sortable by any column;
  2. the per-image table: id, class, predicted class, mask share, the target's probability and each method's
     IoU, insertion, deletion and ID score; sortable, filterable (class, correct / incorrect, "ALA worse than
     method X on metric Y", id text), PAGE_SIZE rows a page, so 5,000 images stay responsive;
  3. a detail view of the selected image (click a row; arrow keys step through the filtered order): the image
     with its mask outline, every method's map over it, its insertion and deletion curves per method (SVG),
     the predicted class and the target's probability;
  4. the figures, then the settings, seeds, versions and timings.
Thumbnails are what the evaluation stored (`vfmxai.evaluation.store`: images and masks at 64 px, maps at
32 px, upsampled bilinearly here), drawn into JPEG sprite sheets of SPRITE_CHUNK images per column; the
sprites are embedded as data URIs while they total at most EMBED_LIMIT bytes and written beside the page in
`report/` beyond that (copy the folder with the page). Curves are quantised to 1/255 for drawing only; every
score shown is the stored one, rounded to 4 decimals. The page cannot show pictures the evaluation did not
store (results written before thumbnails existed): the detail view then says so and shows scores and curves.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from vfmxai.io import atomic_write

PAGE_SIZE = 100
"""Rows of the per-image table per page."""
SPRITE_CHUNK = 100
SPRITE_COLUMNS = 10
TILE = 64
"""Sprite sheets: SPRITE_CHUNK tiles of TILE px, SPRITE_COLUMNS a row (one sheet per column and chunk)."""
EMBED_LIMIT = 16 * 2**20
ASSETS = "report"
"""Where the sprites go, beside the page, when they total more than EMBED_LIMIT bytes."""
IMAGE_METRICS = (("miou", "IoU"), ("insertion", "Ins"), ("deletion", "Del"), ("id", "ID"))
"""The per-image table's default metric columns per method ((metric, short header)); the detail view adds
DETAIL_ONLY. `ReportImages.metrics` sets others."""
DETAIL_ONLY = (("pointing_game", "PG"), ("energy_pg", "EPG"))


@dataclass(frozen=True)
class SummaryTable:
    """A table of rows (methods, or ablation variants) in metrics.json's shape: {row: {metric, metric_std}}."""

    title: str
    rows: Mapping[str, Mapping[str, float]]
    columns: Sequence[tuple[str, str]]
    """(metric, header) in order."""
    labels: Mapping[str, str] = field(default_factory=dict)
    lower_is_better: frozenset[str] = frozenset()
    leading: Sequence[tuple[str, Mapping[str, str]]] = ()
    """Text columns after the first: (header, {row: text})."""
    p_values: tuple[str, Mapping[str, float]] | None = None
    """(header, {row: p}): a last column of p-values."""
    note: str = ""
    first_header: str = "Method"


@dataclass(frozen=True)
class ReportImages:
    """Per-image results, images in dataset order; pictures as the evaluation stored them (None: not stored)."""

    ids: Sequence[str]
    labels: np.ndarray
    predicted: np.ndarray
    scores: Mapping[str, Mapping[str, np.ndarray]]
    """{method: {metric: (N,)}} with the metrics of IMAGE_METRICS and DETAIL_ONLY."""
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]]
    """{method: (insertion (N, K + 1), deletion (N, K + 1))}."""
    class_names: Sequence[str] | None = None
    mask_share: np.ndarray | None = None
    target_prob: np.ndarray | None = None
    images: torch.Tensor | None = None
    """(N, 3, t, t) uint8."""
    masks: torch.Tensor | None = None
    """(N, t, t) uint8, object > 127."""
    maps: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """{method: (N, s, s) uint8}."""
    metrics: Sequence[tuple[str, str]] = IMAGE_METRICS
    """The per-image table's metric columns (metric, short header); the detail view adds `detail_metrics`."""
    detail_metrics: Sequence[tuple[str, str]] = DETAIL_ONLY
    lower: Sequence[str] = ("deletion",)
    """The metrics where lower is better (the "worse than" filter)."""


def write_report_html(
    path: str | Path,
    title: str,
    tables: Sequence[SummaryTable],
    images: ReportImages | None,
    labels: Mapping[str, str],
    figures: Mapping[str, Path] | None = None,
    details: Mapping[str, Any] | None = None,
    summary: str = "",
) -> Path:
    """Write the page to `path` (sprites beside it in `report/` when large); `labels`: {method: display name};
    `figures`: {caption: PNG path}, missing files skipped; `details`: {heading: JSON-able}, shown at the bottom."""
    path = Path(path)
    data: dict[str, Any] = {"page_size": PAGE_SIZE, "images": None}
    if images is not None:
        data["images"] = _image_data(images, labels)
        data["images"]["tiles"] = _tiles(images, path.parent)
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    body = [f"<h1>{html.escape(title)}</h1>"]
    if summary:
        body.append(f"<p>{html.escape(summary)}</p>")
    body += [_summary_table(t) for t in tables]
    if images is not None:
        body.append(IMAGES_SECTION)
    pictures = [(caption, p) for caption, p in (figures or {}).items() if Path(p).is_file()]
    if pictures:
        body.append("<h2>Figures</h2>")
        for caption, picture in pictures:
            source = "data:image/png;base64," + base64.b64encode(Path(picture).read_bytes()).decode()
            body.append(f'<figure><img src="{source}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if details:
        body.append("<h2>Settings, seeds, versions, timings</h2>")
        for heading, value in details.items():
            text = html.escape(json.dumps(value, indent=2, sort_keys=True, default=str))
            body.append(f"<details><summary>{html.escape(heading)}</summary><pre>{text}</pre></details>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n'
        + "\n".join(body)
        + f'\n<script type="application/json" id="report-data">{blob}</script>\n<script>{SCRIPT}</script>\n'
        "</body></html>\n"
    )
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def read_report_data(page: str) -> dict[str, Any]:
    """The JSON blob of a report.html's text, parsed."""
    start = page.index('<script type="application/json" id="report-data">')
    start = page.index(">", start) + 1
    return json.loads(page[start : page.index("</script>", start)])


def _image_data(images: ReportImages, labels: Mapping[str, str]) -> dict[str, Any]:
    methods = list(images.scores)
    metrics = [*images.metrics, *images.detail_metrics]
    curves = {}
    for method, (insertion, deletion) in images.curves.items():
        curves[method] = {"points": int(insertion.shape[1]), "insertion": _quantised(insertion),
                          "deletion": _quantised(deletion)}
    return {
        "ids": [str(i) for i in images.ids],
        "label": [int(v) for v in images.labels],
        "predicted": [int(v) for v in images.predicted],
        "classes": list(images.class_names) if images.class_names is not None else None,
        "mask_share": _numbers(images.mask_share),
        "target_prob": _numbers(images.target_prob),
        "methods": methods,
        "metrics": [[k, h] for k, h in images.metrics],
        "detail_metrics": [[k, h] for k, h in metrics],
        "lower": list(images.lower),
        "reference": "ala" if "ala" in methods else None,
        "scores": {m: {k: _numbers(images.scores[m][k]) for k, _ in metrics if k in images.scores[m]} for m in methods},
        "curves": curves,
        "labels": {m: labels.get(m, m) for m in methods},
    }


def _numbers(values: np.ndarray | None) -> list[float | None] | None:
    if values is None:
        return None
    return [None if not math.isfinite(v) else round(v, 4) for v in np.asarray(values, dtype=np.float64).tolist()]


def _quantised(curves: np.ndarray) -> str:
    """(N, K + 1) probabilities -> base64 of uint8 (value * 255), row-major."""
    values = np.nan_to_num(np.asarray(curves, dtype=np.float64), nan=0.0).clip(0, 1)
    return base64.b64encode((values * 255).round().astype(np.uint8).tobytes()).decode()


def _tiles(images: ReportImages, folder: Path) -> dict[str, Any] | None:
    """The sprite sheets: {"columns": ["image", method...], "sprites": {column: [url per chunk]}, layout}."""
    if images.images is None:
        return None
    n = len(images.ids)
    columns = ["image", *(m for m in images.scores if m in images.maps)]
    sheets: dict[str, list[bytes]] = {c: [] for c in columns}
    for start in range(0, n, SPRITE_CHUNK):
        stop = min(start + SPRITE_CHUNK, n)
        picture = _resized(images.images[start:stop].float() / 255)
        outline = None if images.masks is None else _outline(_resized(images.masks[start:stop, None].float() / 255))
        sheets["image"].append(_sprite(_painted(picture, outline, (0.0, 1.0, 0.0))))
        for method in columns[1:]:
            heat = _resized(images.maps[method][start:stop, None].float() / 255)[:, 0].clamp(0, 1)
            colour = torch.from_numpy(colormaps["jet"](heat.numpy())[..., :3]).permute(0, 3, 1, 2).float()
            sheets[method].append(_sprite(_painted(0.5 * picture + 0.5 * colour, outline, (1.0, 1.0, 1.0))))
    embed = sum(len(b) for sheet in sheets.values() for b in sheet) <= EMBED_LIMIT
    sprites = {}
    for j, column in enumerate(columns):
        urls = []
        for k, jpeg in enumerate(sheets[column]):
            if embed:
                urls.append("data:image/jpeg;base64," + base64.b64encode(jpeg).decode())
            else:
                name = f"{ASSETS}/sprite-{j:02d}-{k:05d}.jpg"
                atomic_write(folder / name, lambda tmp, jpeg=jpeg: tmp.write_bytes(jpeg))
                urls.append(name)
        sprites[column] = urls
    return {"columns": columns, "sprites": sprites, "tile": TILE, "per_row": SPRITE_COLUMNS, "chunk": SPRITE_CHUNK}


def _resized(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(TILE, TILE), mode="bilinear", align_corners=False) if x.shape[-1] != TILE else x


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) soft mask -> (B, T, T) bool: object pixels with a background 4-neighbour (image edge aside)."""
    inside = mask[:, 0] > 0.5
    padded = F.pad(inside[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0] > 0.5
    eroded = inside & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return inside & ~eroded


def _painted(picture: torch.Tensor, outline: torch.Tensor | None, colour: tuple[float, float, float]) -> torch.Tensor:
    picture = picture.clamp(0, 1)
    if outline is None:
        return picture
    return torch.where(outline[:, None], torch.tensor(colour)[None, :, None, None], picture)


def _sprite(tiles: torch.Tensor) -> bytes:
    """(B, 3, T, T) in [0, 1] -> JPEG bytes of a sheet SPRITE_COLUMNS tiles wide (B <= SPRITE_CHUNK)."""
    rows = -(-tiles.shape[0] // SPRITE_COLUMNS)
    padded = F.pad(tiles, (0, 0, 0, 0, 0, 0, 0, rows * SPRITE_COLUMNS - tiles.shape[0]))
    sheet = padded.reshape(rows, SPRITE_COLUMNS, 3, TILE, TILE).permute(0, 3, 1, 4, 2).reshape(rows * TILE, -1, 3)
    buffer = io.BytesIO()
    Image.fromarray((sheet * 255).round().to(torch.uint8).numpy()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _summary_table(table: SummaryTable) -> str:
    """A sortable HTML table: cells carry their value in data-v; the best value per column (as printed) bold."""
    rows = table.rows
    best: dict[str, float] = {}
    for metric, _ in table.columns:
        shown = [round(r[metric], 3) for r in rows.values() if _finite(r.get(metric))]
        if shown and len(rows) > 1:
            best[metric] = min(shown) if metric in table.lower_is_better else max(shown)
    headers = [table.first_header, *(h for h, _ in table.leading), *(h for _, h in table.columns)]
    if table.p_values is not None:
        headers.append(table.p_values[0])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    lines = []
    for key, row in rows.items():
        cells = [f"<td>{html.escape(table.labels.get(key, key))}</td>"]
        cells += [f"<td>{html.escape(texts.get(key, ''))}</td>" for _, texts in table.leading]
        for metric, _ in table.columns:
            value, std = row.get(metric), row.get(f"{metric}_std")
            if not _finite(value):
                cells.append('<td class="num" data-v="">—</td>')
                continue
            text = f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"
            if metric in best and round(value, 3) == best[metric]:
                text = f"<b>{text}</b>"
            cells.append(f'<td class="num" data-v="{value!r}">{text}</td>')
        if table.p_values is not None:
            p = table.p_values[1].get(key)
            shown = "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")
            cells.append(f'<td class="num" data-v="{"" if p is None else repr(p)}">{html.escape(shown)}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (
        f'<h2>{html.escape(table.title)}</h2><table class="sortable summary"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table>{note}"
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


IMAGES_SECTION = """<h2>Every image</h2>
<div id="filters">
<label>class <select id="f-class"></select></label>
<label>prediction <select id="f-correct"><option value="">all</option><option value="1">correct</option>
<option value="0">incorrect</option></select></label>
<span id="f-worse-box"><label>ALA worse than <select id="f-worse"></select></label>
<label>on <select id="f-worse-metric"></select></label></span>
<label>id <input id="f-id" type="search" placeholder="contains"></label>
<label>columns <select id="f-columns"></select></label>
</div>
<div class="pager"><button id="p-first">« first</button><button id="p-prev">‹ previous</button>
<span id="p-info"></span> <button id="p-next">next ›</button><button id="p-last">last »</button>
<span class="hint">click a row or a header; ← → (↑ ↓) step through the images</span></div>
<div class="scroll"><table id="images"><thead></thead><tbody></tbody></table></div>
<section id="detail"><p class="hint">Select an image above.</p></section>"""

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}th,td{padding:2px 7px;border-bottom:1px solid #e3e3e3;white-space:nowrap}
th{background:#f4f4f4;cursor:pointer;user-select:none;position:sticky;top:0}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:32em;overflow:auto;border:1px solid #ddd}
#images tbody tr{cursor:pointer}#images tbody tr:hover{background:#eef5ff}
#images tbody tr.selected{background:#cfe3ff}#images thead tr:first-child th{top:0}
#images thead tr:nth-child(2) th{top:1.6em}
td.ok{color:#176317}td.bad{color:#b00020;font-weight:600}
#filters label{margin-right:1em}.pager{margin:.4em 0}.pager button{margin:0 2px}
.hint,.note{color:#666;font-size:.9em}
#detail{margin-top:1em;padding:.6em;border:1px solid #ddd;min-height:6em}
.tiles{display:flex;flex-wrap:wrap;gap:10px}.card{width:136px;font-size:12px}
.tile{width:128px;height:128px;background-repeat:no-repeat;border:1px solid #ccc;background-color:#eee}
.card .name{font-weight:600}.curves{display:flex;flex-wrap:wrap;gap:16px;margin-top:10px}
.legend span{display:inline-block;margin-right:10px;font-size:12px}
.legend i{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:3px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
pre{background:#f7f7f7;padding:.5em;overflow:auto;max-height:30em}
"""

SCRIPT = r"""
(function () {
"use strict";
const D = JSON.parse(document.getElementById("report-data").textContent);
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#000000", "#aec7e8"];
function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function missing(v) { return v === null || v === undefined || (typeof v === "number" && isNaN(v)); }
function compare(a, b, dir) {
  const am = missing(a), bm = missing(b);
  if (am || bm) return am - bm;  // missing values last in either direction
  const s = typeof a === "string" ? a.localeCompare(b, undefined, {numeric: true}) : a - b;
  return dir === "asc" ? s : -s;
}
function fmt(v, digits) { return missing(v) ? "—" : v.toFixed(digits); }

// the summary tables: sort the rows by the clicked column
document.querySelectorAll("table.sortable").forEach(function (table) {
  const heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, c) {
    th.addEventListener("click", function () {
      const dir = th.dataset.dir === "asc" ? "desc" : "asc";
      heads.forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      const value = function (row) {
        const cell = row.cells[c];
        if (cell.dataset.v === undefined) return cell.textContent;
        return cell.dataset.v === "" ? null : Number(cell.dataset.v);
      };
      const body = table.tBodies[0];
      Array.from(body.rows).sort(function (a, b) { return compare(value(a), value(b), dir); })
        .forEach(function (row) { body.appendChild(row); });
    });
  });
});

const P = D.images;
if (!P) return;
const N = P.ids.length;
const label = function (m) { return P.labels[m] || m; };
const className = function (k) { return P.classes && P.classes[k] !== undefined ? P.classes[k] : String(k); };
const metricName = {};
P.detail_metrics.forEach(function (pair) { metricName[pair[0]] = pair[1]; });
const curveCache = {};
function curve(method, kind, i) {
  const key = method + "/" + kind;
  if (!curveCache[key]) {
    const raw = atob(P.curves[method][kind]);
    const bytes = new Uint8Array(raw.length);
    for (let k = 0; k < raw.length; k++) bytes[k] = raw.charCodeAt(k);
    curveCache[key] = bytes;
  }
  const n = P.curves[method].points, out = [];
  for (let k = 0; k < n; k++) out.push(curveCache[key][i * n + k] / 255);
  return out;
}

const state = {sort: null, dir: "asc", page: 0, order: [], selected: null};
const base = [
  {key: "index", head: "#", get: function (i) { return i; }, show: function (i) { return String(i + 1); }},
  {key: "id", head: "image", get: function (i) { return P.ids[i]; }},
  {key: "class", head: "class", get: function (i) { return className(P.label[i]); }},
  {key: "predicted", head: "predicted", get: function (i) { return className(P.predicted[i]); },
   cls: function (i) { return P.label[i] === P.predicted[i] ? "ok" : "bad"; }},
];
if (P.mask_share) {
  base.push({key: "mask", head: "mask share", get: function (i) { return P.mask_share[i]; }, digits: 3});
}
if (P.target_prob) {
  base.push({key: "prob", head: "p(target)", get: function (i) { return P.target_prob[i]; }, digits: 3});
}
function scoreColumn(m, k) {
  return {key: m + ":" + k, head: metricName[k], group: label(m), method: m, metric: k, digits: 3,
          get: function (i) { return P.scores[m][k] ? P.scores[m][k][i] : null; }};
}

const selects = {
  cls: document.getElementById("f-class"), correct: document.getElementById("f-correct"),
  worse: document.getElementById("f-worse"), worseMetric: document.getElementById("f-worse-metric"),
  id: document.getElementById("f-id"), columns: document.getElementById("f-columns"),
};
function options(select, pairs) {
  pairs.forEach(function (pair) { select.appendChild(el("option", {value: pair[0]}, pair[1])); });
}
const classes = Array.from(new Set(P.label))
  .sort(function (a, b) { return compare(className(a), className(b), "asc"); });
options(selects.cls, [["", "all"]].concat(classes.map(function (k) { return [String(k), className(k)]; })));
options(selects.columns, [["", "every metric"]].concat(P.metrics));
const others = P.methods.filter(function (m) { return m !== P.reference; });
if (P.reference && others.length) {
  options(selects.worse, [["", "—"]].concat(others.map(function (m) { return [m, label(m)]; })));
  options(selects.worseMetric, P.metrics);
} else {
  document.getElementById("f-worse-box").style.display = "none";
}

function columns() {
  const chosen = selects.columns.value;
  const out = base.slice();
  P.methods.forEach(function (m) {
    P.metrics.forEach(function (pair) { if (!chosen || chosen === pair[0]) out.push(scoreColumn(m, pair[0])); });
  });
  return out;
}
let shown = columns();

function worse(i) {
  const m = selects.worse.value;
  if (!m) return true;
  const k = selects.worseMetric.value, ref = P.scores[P.reference][k][i], other = P.scores[m][k][i];
  if (missing(ref) || missing(other)) return false;
  return P.lower.indexOf(k) >= 0 ? ref > other : ref < other;
}
function recompute() {
  const cls = selects.cls.value, correct = selects.correct.value, text = selects.id.value.toLowerCase();
  const order = [];
  for (let i = 0; i < N; i++) {
    if (cls && String(P.label[i]) !== cls) continue;
    if (correct && String(Number(P.label[i] === P.predicted[i])) !== correct) continue;
    if (text && P.ids[i].toLowerCase().indexOf(text) < 0) continue;
    if (!worse(i)) continue;
    order.push(i);
  }
  const column = shown.find(function (c) { return c.key === state.sort; });
  if (column) order.sort(function (a, b) { return compare(column.get(a), column.get(b), state.dir) || a - b; });
  state.order = order;
}
function pages() { return Math.max(1, Math.ceil(state.order.length / D.page_size)); }

const table = document.getElementById("images");
function renderHead() {
  const thead = table.tHead;
  thead.textContent = "";
  const top = el("tr"), bottom = el("tr");
  top.appendChild(el("th", {colspan: String(base.length)}, ""));
  let group = null, span = null;
  shown.slice(base.length).forEach(function (c) {
    if (c.group !== group) { group = c.group; span = el("th", {colspan: "0"}, group); top.appendChild(span); }
    span.setAttribute("colspan", String(Number(span.getAttribute("colspan")) + 1));
  });
  shown.forEach(function (c) {
    const th = el("th", {"data-key": c.key}, c.head);
    if (c.key === state.sort) th.dataset.dir = state.dir;
    th.addEventListener("click", function () {
      state.dir = state.sort === c.key && state.dir === "asc" ? "desc" : "asc";
      state.sort = c.key;
      state.page = 0;
      update();
    });
    bottom.appendChild(th);
  });
  thead.appendChild(top);
  thead.appendChild(bottom);
}
function renderBody() {
  const body = table.tBodies[0];
  body.textContent = "";
  const start = state.page * D.page_size;
  state.order.slice(start, start + D.page_size).forEach(function (i) {
    const row = el("tr", {"data-index": String(i)});
    if (i === state.selected) row.className = "selected";
    shown.forEach(function (c) {
      const v = c.get(i);
      const cell = el("td", {}, c.show ? c.show(i) : (c.digits ? fmt(v, c.digits) : String(v)));
      if (c.digits || c.key === "index") cell.className = "num";
      if (c.cls) cell.className = c.cls(i);
      row.appendChild(cell);
    });
    row.addEventListener("click", function () { select(i); });
    body.appendChild(row);
  });
  document.getElementById("p-info").textContent =
    "page " + (state.page + 1) + " of " + pages() + " · " + state.order.length + " of " + N + " images";
}
function update() { recompute(); state.page = Math.min(state.page, pages() - 1); renderHead(); renderBody(); }

function tile(column, i) {
  const T = P.tiles, box = el("div", {"class": "tile"});
  if (!T || T.columns.indexOf(column) < 0) { box.textContent = "not stored"; return box; }
  const chunk = Math.floor(i / T.chunk), k = i % T.chunk, scale = 128 / T.tile;
  const rows = Math.ceil(Math.min(T.chunk, N - chunk * T.chunk) / T.per_row);
  box.style.backgroundImage = "url(\"" + T.sprites[column][chunk] + "\")";
  box.style.backgroundSize = (T.per_row * 128) + "px " + (rows * 128) + "px";
  const left = -(k % T.per_row) * T.tile * scale, top = -Math.floor(k / T.per_row) * T.tile * scale;
  box.style.backgroundPosition = left + "px " + top + "px";
  return box;
}
function svgCurves(kind, i) {
  // markup through innerHTML: the HTML parser puts <svg> in the SVG namespace, no namespace string needed
  const W = 340, H = 224, L = 34, B = 40, R = 8, TOP = 18, parts = [];
  const x = function (t) { return (L + t * (W - L - R)).toFixed(1); };
  const y = function (p) { return (H - B - p * (H - B - TOP)).toFixed(1); };
  parts.push('<rect x="' + L + '" y="' + TOP + '" width="' + (W - L - R) + '" height="' + (H - B - TOP) +
             '" fill="none" stroke="#999"/>');
  [0, 0.5, 1].forEach(function (t) {
    parts.push('<text x="' + x(t) + '" y="' + (H - B + 14) + '" font-size="10" text-anchor="middle">' + t + "</text>");
    parts.push('<text x="' + (L - 4) + '" y="' + (Number(y(t)) + 3) + '" font-size="10" text-anchor="end">' + t +
               "</text>");
  });
  parts.push('<text x="' + L + '" y="12" font-size="12" font-weight="600">' +
             (kind === "insertion" ? "Insertion" : "Deletion") + ": probability of the target class</text>");
  parts.push('<text x="' + x(0.5) + '" y="' + (H - 6) + '" font-size="11" text-anchor="middle">fraction of pixels ' +
             (kind === "insertion" ? "inserted" : "deleted") + "</text>");
  P.methods.forEach(function (m, j) {
    if (!P.curves[m]) return;
    const values = curve(m, kind, i), n = values.length;
    const points = values.map(function (p, k) { return x(k / (n - 1)) + "," + y(p); });
    parts.push('<polyline data-method="' + j + '" points="' + points.join(" ") + '" fill="none" stroke="' +
               COLOURS[j % COLOURS.length] + '" stroke-width="1.6"/>');
  });
  const box = el("div", {"class": "curve curve-" + kind});
  box.innerHTML = '<svg width="' + W + '" height="' + H + '">' + parts.join("") + "</svg>";
  return box;
}
function select(i) {
  state.selected = i;
  const at = state.order.indexOf(i);
  if (at >= 0) state.page = Math.floor(at / D.page_size);
  renderBody();
  const row = table.querySelector('tr[data-index="' + i + '"]');
  if (row) row.scrollIntoView({block: "nearest"});
  const detail = document.getElementById("detail");
  detail.textContent = "";
  detail.appendChild(el("h3", {}, "Image " + (i + 1) + ": " + P.ids[i]));
  const right = P.label[i] === P.predicted[i];
  let facts = "class " + className(P.label[i]) + " · predicted " + className(P.predicted[i]) +
      (right ? " (correct)" : " (wrong)");
  if (P.target_prob) facts += " · probability of the target class " + fmt(P.target_prob[i], 3);
  if (P.mask_share) facts += " · mask share " + fmt(P.mask_share[i], 3);
  detail.appendChild(el("p", {}, facts));
  const tiles = el("div", {"class": "tiles"});
  const first = el("div", {"class": "card"});
  first.appendChild(tile("image", i));
  first.appendChild(el("div", {"class": "name"}, "image, mask outline"));
  tiles.appendChild(first);
  P.methods.forEach(function (m) {
    const card = el("div", {"class": "card", "data-method": m});
    card.appendChild(tile(m, i));
    card.appendChild(el("div", {"class": "name"}, label(m)));
    const parts = P.detail_metrics.filter(function (pair) { return P.scores[m][pair[0]]; })
      .map(function (pair) { return pair[1] + " " + fmt(P.scores[m][pair[0]][i], 3); });
    card.appendChild(el("div", {}, parts.join(" · ")));
    tiles.appendChild(card);
  });
  detail.appendChild(tiles);
  if (!P.tiles) detail.appendChild(el("p", {"class": "hint"}, "No thumbnails stored for this evaluation."));
  const curves = el("div", {"class": "curves"});
  curves.appendChild(svgCurves("insertion", i));
  curves.appendChild(svgCurves("deletion", i));
  detail.appendChild(curves);
  const legend = el("div", {"class": "legend"});
  P.methods.forEach(function (m, j) {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = COLOURS[j % COLOURS.length];
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(label(m)));
    legend.appendChild(item);
  });
  detail.appendChild(legend);
}
function step(by) {
  if (!state.order.length) return;
  const at = state.order.indexOf(state.selected);
  const next = at < 0 ? 0 : Math.max(0, Math.min(state.order.length - 1, at + by));
  select(state.order[next]);
}
document.addEventListener("keydown", function (event) {
  const tag = event.target.tagName;
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
  if (event.key === "ArrowRight" || event.key === "ArrowDown") { step(1); event.preventDefault(); }
  if (event.key === "ArrowLeft" || event.key === "ArrowUp") { step(-1); event.preventDefault(); }
});
function go(page) { state.page = Math.max(0, Math.min(pages() - 1, page)); renderBody(); }
document.getElementById("p-first").addEventListener("click", function () { go(0); });
document.getElementById("p-prev").addEventListener("click", function () { go(state.page - 1); });
document.getElementById("p-next").addEventListener("click", function () { go(state.page + 1); });
document.getElementById("p-last").addEventListener("click", function () { go(pages() - 1); });
[selects.cls, selects.correct, selects.worse, selects.worseMetric].forEach(function (s) {
  s.addEventListener("change", function () { state.page = 0; update(); });
});
selects.columns.addEventListener("change", function () { shown = columns(); update(); });
selects.id.addEventListener("input", function () { state.page = 0; update(); });
update();
})();
"""
