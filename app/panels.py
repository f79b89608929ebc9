"""Live panels drawn from `engine.snapshot()` dicts: plain functions, HTML strings out, no gradio.

Every function takes the snapshot (or None before a model is loaded) and returns HTML that renders
in well under a millisecond per frame, so the UI can refresh it at ~10 Hz while tokens stream.
"""
from __future__ import annotations

import base64
import html
import io

# One colour per cache state; the same colours in the heatmap, the hit-rate chart and the legends.
NOT_CACHED, TOP_CACHED, FULL_CACHED = "#e5e7eb", "#93c5fd", "#1e40af"
ACTIVE, PREFETCHED, MISS = "#f97316", "#16a34a", "#f3f4f6"
_CACHE_COLOUR = {None: NOT_CACHED, "top": TOP_CACHED, "full": FULL_CACHED}
GRID_MAX_CELLS = 768  # above this many cells the heatmap is a PNG instead of a CSS grid
PNG_WIDTH, PNG_HEIGHT = 520, 320  # pixels: within the panel, so the browser scales the PNG up, never down


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _placeholder(text: str) -> str:
    return f'<div class="mp-empty">{html.escape(text)}</div>'


# ---- heatmap: MoE layers (rows) x experts (columns) ----

def heatmap_legend() -> str:
    items = [(f"background:{NOT_CACHED}", "not cached"), (f"background:{TOP_CACHED}", "top segment cached"),
             (f"background:{FULL_CACHED}", "whole expert cached"),
             (f"background:{NOT_CACHED};box-shadow:inset 0 0 0 3px {ACTIVE}", "active this token"),
             (f"background:radial-gradient({PREFETCHED} 38%, {NOT_CACHED} 42%)", "prefetched (predicted)")]
    swatches = "".join(f'<span class="mp-key"><i style="{s}"></i>{t}</span>' for s, t in items)
    return f'<div class="mp-legend">{swatches}</div>'


def _cell_state(layer: dict, e: int) -> tuple[str | None, bool, bool]:
    return layer["cached"][e], e in layer.get("active", ()), e in layer.get("prefetched", ())


def _grid(layers: list[dict], experts: int) -> str:
    rows = []
    for layer in layers:
        active, pref = set(layer.get("active", ())), set(layer.get("prefetched", ()))
        cells = []
        for e, cached in enumerate(layer["cached"]):
            cls = "mp-cell" + (" act" if e in active else "") + (" pre" if e in pref else "")
            state = {None: "not cached", "top": "top cached", "full": "full cached"}[cached]
            extra = (", active" if e in active else "") + (", prefetched" if e in pref else "")
            cells.append(f'<div class="{cls}" style="background:{_CACHE_COLOUR[cached]}" '
                         f'title="layer {layer["layer"]}, expert {e}: {state}{extra}"></div>')
        rows.append(f'<div class="mp-rowlabel">L{layer["layer"]}</div>' + "".join(cells))
    head = '<div class="mp-rowlabel"></div>' + "".join(f'<div class="mp-collabel">{e}</div>' for e in range(experts))
    style = f"grid-template-columns: 2.6em repeat({experts}, minmax(0, 1fr))"
    return f'<div class="mp-grid" style="{style}">{head}{"".join(rows)}</div>'


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def heatmap_png(layers: list[dict], experts: int, width: int = PNG_WIDTH, height: int = PNG_HEIGHT) -> bytes:
    """PNG with one block per (layer, expert) and a 1-pixel gap, at most `width` x `height` pixels
    (the page only ever scales it up, so no cell is dropped): the block is the cache colour, an
    orange ring marks an active expert, a green centre a prefetched one."""
    import numpy as np
    from PIL import Image

    rows = len(layers)
    cw, ch = max(3, min(9, width // experts - 1)), max(3, min(12, height // rows - 1))  # cell width, height
    palette = np.array([_rgb(_CACHE_COLOUR[c]) for c in (None, "top", "full")], dtype=np.uint8)
    state = np.array([[{None: 0, "top": 1, "full": 2}[c] for c in layer["cached"]] for layer in layers])
    active, pref = np.zeros((2, rows, experts), dtype=bool)
    for row, layer in enumerate(layers):
        active[row, list(layer.get("active", ()))] = True
        pref[row, list(layer.get("prefetched", ()))] = True
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


def heatmap_html(snap: dict | None) -> str:
    if not snap:
        return _placeholder("The expert cache appears here once a model is loaded.")
    layers, experts = snap["layers"], snap["num_experts"]
    if len(layers) * experts <= GRID_MAX_CELLS:
        body = _grid(layers, experts)
    else:
        data = base64.b64encode(heatmap_png(layers, experts)).decode()
        body = (f'<img class="mp-heatpng" alt="expert cache heatmap" src="data:image/png;base64,{data}">'
                f'<div class="mp-axis">rows: MoE layers {layers[0]["layer"]}–{layers[-1]["layer"]} top to bottom · '
                f'columns: experts 0–{experts - 1} left to right</div>')
    tokens = snap.get("totals", {}).get("tokens", 0)
    title = (f'<div class="mp-title">Expert cache · {len(layers)} MoE layers × {experts} experts, '
             f'top-{snap.get("top_k", "?")} · after token {tokens}</div>')
    return f'<div class="mp-panel" data-tokens="{tokens}">{title}{body}{heatmap_legend()}</div>'


# ---- per-layer plan: budget and split ratio bars ----

def _hit(layer: dict) -> float | None:
    n = layer.get("hits", 0) + layer.get("misses", 0)
    return layer["hits"] / n if n else None


def split_chart_html(snap: dict | None) -> str:
    if not snap:
        return _placeholder("The per-layer plan (VRAM budget and split ratio) appears here.")
    layers = snap["layers"]
    biggest = max((l["budget_bytes"] for l in layers), default=0) or 1
    rows = []
    for l in layers:
        width_b = 100 * l["budget_bytes"] / biggest
        width_r = 100 * l["split_ratio"]
        rows.append(
            f'<tr><td class="mp-l">L{l["layer"]}</td>'
            f'<td class="mp-n">{fmt_bytes(l["budget_bytes"])}</td>'
            f'<td><div class="mp-bar"><b style="width:{width_b:.1f}%;background:{FULL_CACHED}"></b></div></td>'
            f'<td class="mp-n">{l["split_ratio"]:.2f}</td>'
            f'<td><div class="mp-bar"><b style="width:{width_r:.1f}%;background:{TOP_CACHED}"></b></div></td>'
            f'<td class="mp-n">{l["slots"]}</td><td class="mp-n">{fmt_pct(l.get("predicted_hit_rate"))}</td>'
            f'<td class="mp-n">{fmt_pct(_hit(l))}</td></tr>')
    layout = snap.get("layout", {})
    total = sum(l["budget_bytes"] for l in layers)
    head = ('<tr><th>layer</th><th colspan="2">expert-cache budget</th><th colspan="2">split ratio r (top share)</th><th>slots</th>'
            '<th>predicted hit</th><th>measured hit</th></tr>')
    title = (f'<div class="mp-title">Per-layer plan · layout: {html.escape(str(layout.get("source", "?")))} · '
             f'cache total {fmt_bytes(total)}</div>')
    return f'<div class="mp-panel">{title}<div class="mp-scroll"><table class="mp-plan">{head}{"".join(rows)}</table></div></div>'


# ---- hit rate per decode token: full hits stacked under top-segment hits ----

def _area(xs: list[float], lo: list[float], hi: list[float]) -> str:
    top = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, hi))
    bottom = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(reversed(xs), reversed(lo)))
    return f"{top} {bottom}"


def hitrate_chart_html(snap: dict | None, width: int = 640, height: int = 190) -> str:
    history = (snap or {}).get("history") or []
    if not history:
        return _placeholder("Hit rate per generated token appears here while the model writes.")
    left, right, top, bottom = 38, 8, 8, 26
    w, h = width - left - right, height - top - bottom
    n = len(history)
    xs = [left + (w * i / max(1, n - 1) if n > 1 else w / 2) for i in range(n)]
    y = lambda v: top + h * (1 - max(0.0, min(1.0, v)))  # noqa: E731
    full = [r.get("full_hit_rate", 0.0) for r in history]
    both = [f + r.get("top_hit_rate", 0.0) for f, r in zip(full, history)]
    if n == 1:  # one token: draw it as a bar a few pixels wide
        xs = [xs[0] - 3, xs[0] + 3]
        full, both = full * 2, both * 2
    base = [y(0.0)] * len(xs)
    grid = "".join(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="g"/>'
                   f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{int(v * 100)}%</text>'
                   for v in (0.0, 0.5, 1.0))
    first, last = history[0]["token"], history[-1]["token"]
    svg = (f'<svg viewBox="0 0 {width} {height}" class="mp-svg" role="img" aria-label="hit rate per token">{grid}'
           f'<polygon points="{_area(xs, base, [y(v) for v in full])}" fill="{FULL_CACHED}"/>'
           f'<polygon points="{_area(xs, [y(v) for v in full], [y(v) for v in both])}" fill="{TOP_CACHED}"/>'
           f'<text x="{left}" y="{height - 6}">token {first}</text>'
           f'<text x="{left + w}" y="{height - 6}" text-anchor="end">token {last}</text>'
           f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">decode token (last {n})</text></svg>')
    legend = (f'<div class="mp-legend"><span class="mp-key"><i style="background:{FULL_CACHED}"></i>full hit '
              f'(whole expert cached)</span><span class="mp-key"><i style="background:{TOP_CACHED}"></i>top hit '
              f'(top cached, bottom fetched)</span><span class="mp-key"><i style="background:#fff;border:1px solid #ccc">'
              f'</i>miss (whole expert fetched)</span></div>')
    return f'<div class="mp-panel"><div class="mp-title">Hit rate per token (share of activated experts)</div>{svg}{legend}</div>'


# ---- numbers ----

def _card(label: str, value: str, note: str = "") -> str:
    note_html = f'<div class="mp-note">{html.escape(note)}</div>' if note else ""
    return f'<div class="mp-card"><div class="mp-label">{label}</div><div class="mp-value">{value}</div>{note_html}</div>'


def stats_html(snap: dict | None) -> str:
    if not snap:
        return _placeholder("No model loaded.")
    t, b = snap.get("totals", {}), snap.get("budgets", {})
    hits = t.get("top_hits", 0) + t.get("full_hits", 0)
    activations = hits + t.get("misses", 0)
    full_share = t.get("full_hits", 0) / activations if activations else None
    top_share = t.get("top_hits", 0) / activations if activations else None
    vram = b.get("vram_bytes")
    budget = fmt_bytes(vram) if vram is not None else "no limit"
    sim = "simulated · " if b.get("simulated") else ""
    cards = [
        _card("speed", f'{t.get("tokens_per_s", 0.0):.1f}<span class="mp-unit">tok/s</span>', f'{t.get("tokens", 0)} tokens'),
        _card("hit rate", fmt_pct(t.get("hit_rate") if activations else None),
              f"full {fmt_pct(full_share)} · top {fmt_pct(top_share)}"),
        _card("moved / token", fmt_bytes(t.get("bytes_per_token")), f'{fmt_bytes(t.get("bytes_fetched"))} in all'),
        _card("eff. bandwidth", f'{t.get("effective_bandwidth_gbps", 0.0):.2f}<span class="mp-unit">GB/s</span>', "bytes moved ÷ time"),
        _card("prefetch precision", fmt_pct(t.get("prefetch_precision")), "guesses used"),
        _card("prefetch recall", fmt_pct(t.get("prefetch_recall")), "uses guessed"),
        _card("VRAM budget", budget, f'{sim}dense {fmt_bytes(b.get("dense_bytes"))}'),
        _card("expert cache", fmt_bytes(b.get("cache_bytes")),
              f'{sum(l["slots"] for l in snap.get("layers", []))} slots'),
    ]
    pred = (snap.get("layout") or {}).get("prediction") or {}
    line = (f'{html.escape(str(snap.get("model", "")))} · {snap.get("family", "")} · {snap.get("device", "")} · '
            f'{snap.get("dtype", "")} · quant {snap.get("quant", "")} · policy {snap.get("policy", "")} · '
            f'one expert {fmt_bytes(snap.get("expert_bytes"))}')
    if pred.get("ms_per_token") is not None:
        base = ", ".join(f"{html.escape(str(k))} {v:.1f} ms" for k, v in (pred.get("baselines") or {}).items())
        line += f' · solver predicts {pred["ms_per_token"]:.1f} ms/token' + (f" (vs {base})" if base else "")
    return f'<div class="mp-panel"><div class="mp-cards">{"".join(cards)}</div><div class="mp-foot">{line}</div></div>'
