"""Live panels drawn from `engine.snapshot()` (a moepic_core.runtime.snapshot.Snapshot): plain functions, HTML
strings out, no gradio.

Every function takes the snapshot (or None before a model is loaded) and returns HTML that renders
in well under a millisecond per frame, so the UI can refresh it at ~10 Hz while tokens stream.
"""
from __future__ import annotations

import base64
import html
import io

from moepic_core.runtime.snapshot import LayerSnapshot, Snapshot
from moepic_core.units import fmt_bytes  # noqa: F401 - the panels' byte format, shared with the engine

# One colour per cache state; the same colours in the heatmap, the hit-rate chart and the legends.
NOT_CACHED, TOP_CACHED, FULL_CACHED = "#e5e7eb", "#93c5fd", "#1e40af"
ACTIVE, PREFETCHED, MISS = "#f97316", "#16a34a", "#f3f4f6"
_CACHE_COLOUR = {None: NOT_CACHED, "top": TOP_CACHED, "full": FULL_CACHED}
GRID_MAX_CELLS = 768  # above this many cells the heatmap is a PNG instead of a CSS grid
PNG_WIDTH, PNG_HEIGHT = 520, 320  # pixels: within the panel, so the browser scales the PNG up, never down


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _placeholder(text: str) -> str:
    return f'<div class="mp-empty">{html.escape(text)}</div>'


# ---- heatmap: MoE layers (rows) x experts (columns) ----

def heatmap_legend() -> str:
    items = [(f"background:{NOT_CACHED}", "not cached"), (f"background:{TOP_CACHED}", "top segment cached"),
             (f"background:{FULL_CACHED}", "whole expert cached"),
             (f"background:{NOT_CACHED};box-shadow:inset 0 0 0 3px {ACTIVE}", "active this token"),
             (f"background:radial-gradient({PREFETCHED} 38%, {NOT_CACHED} 42%)",
              "guessed for this token and copied ahead (on grey: into the staging area, not kept in the cache)")]
    swatches = "".join(f'<span class="mp-key"><i style="{s}"></i>{t}</span>' for s, t in items)
    return f'<div class="mp-legend">{swatches}</div>'


def layer_span(layers: tuple[LayerSnapshot, ...]) -> str:
    """The decoder-layer numbers of the MoE layers, e.g. "decoder layers 2–6" (the numbering every CLI uses)."""
    numbers = [l.layer for l in layers]
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"decoder layers {numbers[0]}–{numbers[-1]}" if len(numbers) > 1 else f"decoder layer {numbers[0]}"
    return "decoder layers " + ", ".join(map(str, numbers))


def _grid(layers: tuple[LayerSnapshot, ...], experts: int) -> str:
    rows = []
    for layer in layers:
        active, pref = set(layer.active), set(layer.prefetched)
        cells = []
        for e, cached in enumerate(layer.cached):
            cls = "mp-cell" + (" act" if e in active else "") + (" pre" if e in pref else "")
            state = {None: "not cached", "top": "top cached", "full": "full cached"}[cached]
            extra = (", active" if e in active else "") + (", prefetched" if e in pref else "")
            cells.append(f'<div class="{cls}" style="background:{_CACHE_COLOUR[cached]}" '
                         f'title="decoder layer {layer.layer}, expert {e}: {state}{extra}"></div>')
        rows.append(f'<div class="mp-rowlabel">{layer.layer}</div>' + "".join(cells))
    head = '<div class="mp-rowlabel">layer</div>' + "".join(f'<div class="mp-collabel">{e}</div>' for e in range(experts))
    style = f"grid-template-columns: 2.6em repeat({experts}, minmax(0, 1fr))"
    return f'<div class="mp-grid" style="{style}">{head}{"".join(rows)}</div>'


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def heatmap_png(layers: tuple[LayerSnapshot, ...], experts: int, width: int = PNG_WIDTH, height: int = PNG_HEIGHT) -> bytes:
    """PNG with one block per (layer, expert) and a 1-pixel gap, at most `width` x `height` pixels
    (the page only ever scales it up, so no cell is dropped): the block is the cache colour, an
    orange ring marks an active expert, a green centre a prefetched one."""
    import numpy as np
    from PIL import Image

    rows = len(layers)
    cw, ch = max(3, min(9, width // experts - 1)), max(3, min(12, height // rows - 1))  # cell width, height
    palette = np.array([_rgb(_CACHE_COLOUR[c]) for c in (None, "top", "full")], dtype=np.uint8)
    state = np.array([[{None: 0, "top": 1, "full": 2}[c] for c in layer.cached] for layer in layers])
    active, pref = np.zeros((2, rows, experts), dtype=bool)
    for row, layer in enumerate(layers):
        active[row, list(layer.active)] = True
        pref[row, list(layer.prefetched)] = True
    ring = np.ones((ch, cw), dtype=bool)
    ring[1:-1, 1:-1] = False
    blocks = np.repeat(np.repeat(palette[state][:, :, None, None, :], ch, 2), cw, 3)  # [L, E, ch, cw, 3]
    blocks[active[:, :, None, None] & ring] = _rgb(ACTIVE)
    blocks[pref[:, :, None, None] & ~ring] = _rgb(PREFETCHED)
    img = np.full((rows * (ch + 1) + 1, experts * (cw + 1) + 1, 3), 255, dtype=np.uint8)
    grid = img[1:, 1:].reshape(rows, ch + 1, experts, cw + 1, 3)
    grid[:, :ch, :, :cw] = blocks.transpose(0, 2, 1, 3, 4)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def heatmap_html(snap: Snapshot | None) -> str:
    if not snap:
        return _placeholder("The expert cache appears here once a model is loaded.")
    layers, experts = snap.layers, snap.num_experts
    if len(layers) * experts <= GRID_MAX_CELLS:
        body = _grid(layers, experts)
    else:
        data = base64.b64encode(heatmap_png(layers, experts)).decode()
        body = (f'<img class="mp-heatpng" alt="expert cache heatmap" src="data:image/png;base64,{data}">'
                f'<div class="mp-axis">rows: {layer_span(layers)} top to bottom · '
                f'columns: experts 0–{experts - 1} left to right</div>')
    tokens = snap.totals.tokens
    title = (f'<div class="mp-title">Expert cache · {len(layers)} MoE layers ({layer_span(layers)}) × {experts} '
             f'experts, top-{snap.top_k} · after token {tokens}</div>')
    return f'<div class="mp-panel" data-tokens="{tokens}">{title}{body}{heatmap_legend()}</div>'


# ---- per-layer plan: budget and split ratio bars ----

def _hit(layer: LayerSnapshot) -> str:
    """Measured hit rate, saying whether hits are whole experts ("full") or top segments ("top")."""
    if not layer.accesses:
        return "–"
    rates = (("full", layer.full_hit_rate), ("top", layer.top_hit_rate))
    return " · ".join(f"{kind} {fmt_pct(x)}" for kind, x in rates if x) or "0%"


def split_chart_html(snap: Snapshot | None) -> str:
    if not snap:
        return _placeholder("The per-layer plan (VRAM budget and split ratio) appears here.")
    layers = snap.layers
    biggest = max((l.budget_bytes for l in layers), default=0) or 1
    rows = []
    for l in layers:
        width_b = 100 * l.budget_bytes / biggest
        width_r = 100 * l.split_ratio
        rows.append(
            f'<tr><td class="mp-l">{l.layer}</td>'
            f'<td class="mp-n">{fmt_bytes(l.budget_bytes)}</td>'
            f'<td><div class="mp-bar"><b style="width:{width_b:.1f}%;background:{FULL_CACHED}"></b></div></td>'
            f'<td class="mp-n">{l.split_ratio:.2f}</td>'
            f'<td><div class="mp-bar"><b style="width:{width_r:.1f}%;background:{TOP_CACHED}"></b></div></td>'
            f'<td class="mp-n">{l.slots}</td><td class="mp-n">{fmt_pct(l.predicted_hit_rate)}</td>'
            f'<td class="mp-n">{_hit(l)}</td></tr>')
    total = sum(l.budget_bytes for l in layers)
    head = ('<tr><th>decoder layer</th><th colspan="2">expert-cache budget</th><th colspan="2">split ratio r '
            '(top share)</th><th>slots</th><th>predicted hit</th><th>measured hit (since load)</th></tr>')
    title = (f'<div class="mp-title">Per-layer plan · layout: {html.escape(snap.layout_source)} · '
             f'cache total {fmt_bytes(total)}</div>')
    return f'<div class="mp-panel">{title}<div class="mp-scroll"><table class="mp-plan">{head}{"".join(rows)}</table></div></div>'


# ---- hit rate per decode token of this tab's replies: full hits stacked under top-segment hits ----

def _area(xs: list[float], lo: list[float], hi: list[float]) -> str:
    top = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, hi))
    bottom = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(reversed(xs), reversed(lo)))
    return f"{top} {bottom}"


def hitrate_legend() -> str:
    return (f'<div class="mp-legend"><span class="mp-key"><i style="background:{FULL_CACHED}"></i>full hit '
            f'(whole expert cached, nothing fetched)</span><span class="mp-key"><i style="background:{TOP_CACHED}">'
            f'</i>top hit (only the top r of the expert cached, the rest fetched)</span><span class="mp-key">'
            f'<i style="background:#fff;border:1px solid #ccc"></i>miss (whole expert fetched)</span>'
            f'<span class="mp-key"><i class="mp-marker"></i>start of a reply</span></div>')


def hitrate_chart_html(session, width: int = 640, height: int = 190) -> str:
    """This tab's replies side by side (`app.session.Session`), a dashed line where each one begins."""
    replies = [r for r in (session.replies if session else ()) if r.rows]
    if not replies:
        return _placeholder("Hit rate per generated token of your replies appears here while the model writes.")
    rows = [row for reply in replies for row in reply.rows]
    left, right, top, bottom = 38, 8, 14, 26
    w, h = width - left - right, height - top - bottom
    n = len(rows)
    x = lambda i: left + (w * i / (n - 1) if n > 1 else w / 2)  # noqa: E731
    y = lambda v: top + h * (1 - max(0.0, min(1.0, v)))  # noqa: E731
    xs = [x(i) for i in range(n)]
    full = [r.full_hit_rate for r in rows]
    both = [f + r.top_hit_rate for f, r in zip(full, rows)]
    if n == 1:  # one token: draw it as a bar a few pixels wide
        xs, full, both = [xs[0] - 3, xs[0] + 3], full * 2, both * 2
    base = [y(0.0)] * len(xs)
    grid = "".join(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="g"/>'
                   f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{int(v * 100)}%</text>'
                   for v in (0.0, 0.5, 1.0))
    marks, at = [], 0
    for reply in replies:
        mx = x(at - 0.5) if at else left
        if at:
            marks.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top - 2}" y2="{top + h}" class="mp-reply"/>')
        marks.append(f'<text x="{mx + 3:.1f}" y="{top - 4}" class="mp-reply-label">reply {reply.number}</text>')
        at += len(reply.rows)
    svg = (f'<svg viewBox="0 0 {width} {height}" class="mp-svg" role="img" aria-label="hit rate per token">{grid}'
           f'<polygon points="{_area(xs, base, [y(v) for v in full])}" fill="{FULL_CACHED}"/>'
           f'<polygon points="{_area(xs, [y(v) for v in full], [y(v) for v in both])}" fill="{TOP_CACHED}"/>'
           f'{"".join(marks)}'
           f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">decoded tokens of your last '
           f'{len(replies)} {"reply" if len(replies) == 1 else "replies"} ({n})</text></svg>')
    title = '<div class="mp-title">Hit rate per token (share of the activated experts), your replies</div>'
    return f'<div class="mp-panel" data-replies="{len(replies)}">{title}{svg}{hitrate_legend()}</div>'


# ---- numbers ----

BASELINE_WORDS = {  # the solver's baselines (layout.prediction["baselines"]) in words
    "transfer_only": "everything over the link, no CPU path",
    "hybrid_whole_expert": "whole experts cached, misses on the CPU, no prefetch",
    "solver_no_split": "the solver without split",
    "uniform_lru_no_split": "every layer the same budget, whole experts, LRU",
    "best_uniform_split": "the best single split ratio for every layer",
}


def _card(label: str, value: str, note: str = "") -> str:
    note_html = f'<div class="mp-note">{html.escape(note)}</div>' if note else ""
    return f'<div class="mp-card"><div class="mp-label">{label}</div><div class="mp-value">{value}</div>{note_html}</div>'


def prediction_words(snap: Snapshot) -> str:
    """The solver's prediction for the layout in words, beside its baselines and what it models."""
    pred = snap.prediction
    if pred.get("ms_per_token") is None:
        return f'layout: {html.escape(snap.layout_source)}, no prediction'
    base = "; ".join(f"{BASELINE_WORDS.get(k, k.replace('_', ' '))}: {v:.2f} ms" for k, v in
                     (pred.get("baselines") or {}).items())
    link = pred.get("bandwidth_source") or f'{pred.get("bandwidth_gbps", "?")} GB/s'
    cpu = (" It models a GPU fed through that link, so on this CPU the measured time is far higher."
           if snap.cpu_mode else "")
    return (f'The solver predicts {pred["ms_per_token"]:.2f} ms/token for this layout'
            + (f" (same budget, {base})" if base else "") + f"; link {html.escape(str(link))}.{cpu}")


def stats_html(snap: Snapshot | None, session=None) -> str:
    """Cards for this tab (speed, hits, bytes: its own replies) and the engine (prefetch, budget)."""
    if not snap:
        return _placeholder("No model loaded.")
    t, b = snap.totals, snap.budgets
    mine = session.totals() if session is not None else {}
    last = session.last if session is not None else None
    last_speed = len(last.rows) / last.seconds if last and last.seconds else None  # decode steps / their time
    speed = f'{last_speed:.1f}<span class="mp-unit">tok/s</span>' if last_speed else '–<span class="mp-unit">tok/s</span>'
    replies = "your reply" if mine.get("replies") == 1 else f'your {mine.get("replies")} replies'
    speed_note = (f'last reply: {last.tokens} tokens · {replies}: '
                  f'{mine["tokens_per_s"]:.1f} tok/s over {mine["tokens"]} tokens' if last and mine.get("tokens_per_s")
                  else "no reply yet in this tab")
    measured = 1000 / mine["tokens_per_s"] if mine.get("tokens_per_s") else None
    pred = snap.prediction.get("ms_per_token")
    r = snap.mean_top_share
    vram = b.vram_bytes
    sim = "simulated · " if b.simulated else ""
    cards = [
        _card("speed", speed, speed_note),
        _card("ms / token", f'{measured:.0f}<span class="mp-unit">ms</span>' if measured else "–",
              f"measured; predicted {pred:.2f} ms/token by the solver" if pred is not None else "measured"),
        _card("full hits", fmt_pct(mine.get("full_hit_rate")), "whole expert cached: nothing fetched"),
        _card("top hits", fmt_pct(mine.get("top_hit_rate")),
              f"top {fmt_pct(r)} of the expert cached, the rest fetched" if r is not None else "no layer is split (r = 1)"),
        _card("moved / token", fmt_bytes(mine.get("bytes_per_token")),
              f'{fmt_bytes(t.bytes_fetched)} since load, all tabs'),
        _card("eff. bandwidth", f'{fmt_bytes(mine.get("bytes_per_s"))}<span class="mp-unit">/s</span>',
              "bytes moved ÷ decode time"),
        _card("prefetch", f'{fmt_pct(t.prefetch_precision)} · {fmt_pct(t.prefetch_recall)}',
              "precision (guesses used) · recall (uses guessed), since load"),
        _card("VRAM budget", fmt_bytes(vram) if vram is not None else "no limit",
              f'{sim}expert cache {fmt_bytes(b.cache_bytes)}, {snap.slots} slots'),
    ]
    line = (f'{html.escape(snap.model)} · {snap.family} · {snap.device} · {snap.dtype} · quant {snap.quant} · '
            f'policy {snap.policy} · one expert {fmt_bytes(snap.expert_bytes)}. {prediction_words(snap)}')
    return f'<div class="mp-panel"><div class="mp-cards">{"".join(cards)}</div><div class="mp-foot">{line}</div></div>'
