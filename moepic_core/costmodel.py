"""Cost model: expected decode time of one MoE layer for one token, from its cache budget and split ratio.

Units: bytes, milliseconds; bandwidth in GB/s (1e9 bytes/s) becomes `bw` bytes per ms.

A layer `l` with `C` cached slots at split ratio `r` (each slot holds an expert's top `r` of rows;
`r = 1` caches whole experts) serves the token's `k` activations with hit rate `h = h_l(C)` (hit-rate
curve of the cache policy, measured by replaying a routing trace). With `S` the bytes of one expert,
`c_e` the ms to compute one whole expert at batch 1, `c_d` the ms of the dense part of one layer
(attention, norms, router, shared experts), `a` the predictor's recall and `g` its guesses per layer:

    X      = k * S * (1 - h * r)              bytes the token needs: bottoms of hits, whole misses
    c_top  = k * h * r * c_e                  top segments of hits: computed at once, nothing to wait for
    W_l    = c_d + k * (1 - h' * r') * c_e    prefetch window: layer l-1 computing what it fetched
                                              (h', r' of layer l-1), then layer l's attention;
                                              W_0 = c_d (the first MoE layer has no previous layer)
    P      = (g / k) * X                      prefetch traffic: g guesses, each missing X/k bytes on average
    useful = (a * k / g) * min(P, W_l * bw)   bytes of right guesses that arrived inside the window
    D      = X - useful                       on-demand bytes: fetched after routing, on the critical path
    F      = D / bw
    T_l    = c_d + k * c_e + max(0, F - c_top)

i.e. compute time (splitting changes no FLOPs) plus the part of the on-demand fetch not hidden
behind the top-segment compute. Bytes over the link per token: D + min(P, W_l * bw) (wrong guesses
included). The window ignores link time that layer l-1's top compute leaves idle (conservative),
which makes `T_l` depend on layer l-1's config only: the solver's fixed point and the exact DP's
state both rest on that. Splitting can lose: at the same budget `r < 1` fetches `(1 - r)` of every
hit, so once `r = 1` slots cover the hot experts, whole slots move fewer bytes.

Defaults when nothing is measured: a decode step is memory-bound, so `c_e = S / device_gbps` and
`c_d = dense_bytes / layers / device_gbps`, with `DEFAULT_DEVICE_GBPS` (a 12 GB-class card).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import SPLIT_CHUNKS, split_rows
from .spec import ModelSpec

DEFAULT_DEVICE_GBPS = 400.0  # device memory bandwidth for the default compute times (RTX 3060 360, 4070 504)


@dataclass
class CostModel:
    """Everything the per-layer cost needs. `hit[l, C]`: hit rate with C slots (C = 0..E)."""

    hit: np.ndarray            # float [L, E+1]
    accuracy: np.ndarray       # float [L], predictor recall per layer (0: no prefetch)
    expert_bytes: int          # S
    top_k: int                 # k
    bw: float                  # bytes per ms
    expert_ms: float           # c_e
    dense_ms: float            # c_d
    other_ms: float = 0.0      # per token outside MoE layers
    guesses: int = 0           # g (0: top_k)
    ratios: np.ndarray = None  # float [M], ratio of split m (index 0..M-1); last is 1.0
    slot_units: np.ndarray = None  # int [M], budget units of one slot at split m
    unit_bytes: int = 1

    def __post_init__(self):
        self.hit = np.clip(np.asarray(self.hit, float), 0.0, 1.0)
        self.accuracy = np.clip(np.asarray(self.accuracy, float) * np.ones(self.num_layers), 0.0, 1.0)
        self.guesses = self.guesses or self.top_k
        if self.ratios is None:
            self.ratios = np.arange(1, SPLIT_CHUNKS + 1) / SPLIT_CHUNKS
            self.unit_bytes = max(1, self.expert_bytes // SPLIT_CHUNKS)
            self.slot_units = np.arange(1, SPLIT_CHUNKS + 1)
        self.ratios = np.asarray(self.ratios, float)
        self.slot_units = np.asarray(self.slot_units, np.int64)

    @property
    def num_layers(self) -> int:
        return self.hit.shape[0]

    @property
    def num_experts(self) -> int:
        return self.hit.shape[1] - 1

    def window(self, prev_h, prev_r):
        """Prefetch window (ms) of a layer whose previous layer has hit rate `prev_h` at ratio `prev_r`."""
        return self.dense_ms + self.top_k * (1.0 - np.asarray(prev_h) * prev_r) * self.expert_ms

    @property
    def first_window(self) -> float:
        return self.dense_ms

    def layer(self, l: int, h, r, window):
        """(ms, on-demand bytes, bytes moved) of layer `l`; h, r, window broadcast as arrays."""
        h, r, window = np.asarray(h, float), np.asarray(r, float), np.asarray(window, float)
        k, a, g = self.top_k, self.accuracy[l], self.guesses
        need = k * self.expert_bytes * (1.0 - h * r)
        traffic = need * (g / k) if a > 0 else np.zeros_like(need)
        arrived = np.minimum(traffic, window * self.bw)
        on_demand = need - (a * k / g) * arrived
        top = k * h * r * self.expert_ms
        ms = self.dense_ms + k * self.expert_ms + np.maximum(0.0, on_demand / self.bw - top)
        return ms, on_demand, on_demand + arrived

    def evaluate(self, slots, ms_index) -> dict:
        """Per-layer and total cost of a layout given as slots[l] and split index ms_index[l]."""
        out = {"layers": [], "ms_per_token": self.other_ms, "bytes_per_token": 0.0}
        window = self.first_window
        for l, (c, m) in enumerate(zip(slots, ms_index)):
            h, r = self.hit[l, c], self.ratios[m]
            ms, _, moved = self.layer(l, h, r, window)
            out["layers"].append({"hit_rate": float(h), "ms": float(ms), "bytes_per_token": float(moved)})
            out["ms_per_token"] += float(ms)
            out["bytes_per_token"] += float(moved)
            window = self.window(h, r)
        return out


def compute_times(spec: ModelSpec, quant: str = "none", dtype: str = "float16",
                  compute_ms: dict | None = None) -> tuple[float, float, float]:
    """(expert_ms, dense_ms, other_ms). `compute_ms` may give any of the three, or "device_gbps"."""
    compute_ms = dict(compute_ms or {})
    gbps = float(compute_ms.pop("device_gbps", DEFAULT_DEVICE_GBPS))
    expert_ms = compute_ms.pop("expert_ms", spec.expert_bytes(quant, dtype) / (gbps * 1e6))
    dense_ms = compute_ms.pop("dense_ms", spec.dense_bytes(dtype) / spec.num_moe_layers / (gbps * 1e6))
    other_ms = compute_ms.pop("other_ms", 0.0)
    if compute_ms:
        raise ValueError(f"unknown compute_ms keys {sorted(compute_ms)}; use expert_ms, dense_ms, other_ms, device_gbps")
    return float(expert_ms), float(dense_ms), float(other_ms)


def build_cost_model(spec: ModelSpec, hit: np.ndarray, accuracy, *, bandwidth_gbps: float, quant: str = "none",
                     dtype: str = "float16", compute_ms: dict | None = None, guesses: int = 0) -> CostModel:
    """A CostModel with the spec's real slot sizes (split ratios in chunks of I/16, as `layout` rounds them)."""
    if bandwidth_gbps <= 0:
        raise ValueError(f"bandwidth must be > 0 GB/s, got {bandwidth_gbps}")
    I, rb = spec.intermediate_size, spec.row_bytes(quant, dtype)
    chunk_rows = max(1, I // SPLIT_CHUNKS)
    rows = sorted({split_rows(I, m / SPLIT_CHUNKS) for m in range(1, SPLIT_CHUNKS + 1)})
    expert_ms, dense_ms, other_ms = compute_times(spec, quant, dtype, compute_ms)
    return CostModel(hit=hit, accuracy=accuracy, expert_bytes=spec.expert_bytes(quant, dtype), top_k=spec.top_k,
                     bw=bandwidth_gbps * 1e6, expert_ms=expert_ms, dense_ms=dense_ms, other_ms=other_ms,
                     guesses=guesses, ratios=np.array([n / I for n in rows]),
                     slot_units=np.array([-(-n // chunk_rows) for n in rows]), unit_bytes=chunk_rows * rb)
