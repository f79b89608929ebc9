"""Cost model: expected decode time of one MoE layer for one token, from its cache, split and placement.

Units: bytes, milliseconds; GB/s (1e9 bytes/s) become bytes per ms (`bw`, `cpu_bw`).

Three workers overlap in a layer: the link (host -> device copies, one stream), the GPU (the dense part
and every expert segment that is in VRAM) and the CPU (segments computed from the host store; only
the hidden vector goes over and the result comes back, `cpu_hop_ms`). A layer `l` with `C` slots at
split ratio `r` (a slot holds an expert's top `r` of rows) serves each of the token's `k`
activations as a hit with rate `h = h_l(C)`, an admitted miss with rate `α = α_l(C)` (the policy
caches it), or a miss that stays out (`1 - h - α`); both curves are measured by replaying the
calibration trace through the policy. Shares of one expert's `S` bytes, per activation:

    top of a hit              h * r          GPU, from its slot: nothing to move
    top of an admitted miss   α * r          link (it must reach its slot anyway), then GPU
    bottom of those two       (h + α)(1 - r) `bottom_on`: CPU, or link then GPU
    a miss that stays out     1 - h - α      `miss_on`: CPU, or link then GPU

so the link carries `X = k S (link shares)` bytes and the CPU reads `Y = k S (CPU shares)`.
With `c_e` the GPU ms of one whole expert at batch 1, `c_d` the dense part of one layer (attention,
norms, router, shared experts), predictor recall `a` over `g` guesses and prefetch chunks of `q` bytes:

    W_l    = c_d + (M_{l-1} - F_{l-1})       prefetch window: link time layer l-1 left idle, then
                                             layer l's attention, both taken without layer l-1's
                                             own prefetch (so W_l rests on layer l-1's config
                                             alone; off by at most one chunk); W_0 = c_d
    P      = (g / k) * X                     prefetch traffic when the layer prefetches (else 0)
    useful = (a k / g) * min(P, W_l bw)      bytes of right guesses that arrived inside the window
    stall  = (1 - a k / g) * min(q, max(0, P - W_l bw)) / bw
                                             at routing, queued chunks of wrong guesses are dropped;
                                             the one in flight (<= q bytes) still blocks the link
    F_l    = (X - useful) / bw + stall       link busy after routing
    G      = k c_e (GPU shares) + max(0, F_l - k h r c_e)
                                             GPU: all its segments; fetched ones wait for the link,
                                             the tops of hits hide part of that wait
    U      = Y / cpu_bw + cpu_hop_ms [Y > 0]
    M_l    = max(G, U)
    T_l    = c_d + M_l

Bytes over the link per token: `X - useful + min(P, W_l bw) + stall bw` (wrong guesses included).
`T_l` and `W_{l+1}` depend on layer l-1's and l's configs only: the solver's fixed point and the
exact DP's state both rest on that. With `q = inf` the prefetch is FIFO and a wrong guess blocks the
link until it is through (the runtime before chunked prefetch). With everything on the link and
nothing admitted differently this is the transfer-only model (`G` = all compute + the unhidden fetch).

Defaults when nothing is measured: a decode step is memory-bound, so `c_e = S / device_gbps` and
`c_d = dense_bytes / layers / device_gbps`, with `DEFAULT_DEVICE_GBPS` (a 12 GB-class card).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layout import SPLIT_CHUNKS, split_rows, split_step
from ..options import bad
from ..spec import ModelSpec

DEFAULT_DEVICE_GBPS = 400.0  # device memory bandwidth for the default compute times (RTX 3060 360, 4070 504)
# a layer that uses the CPU: hidden vector to the host, result back, worker wake-up. The worker's
# submit-to-result round trip measured 0.09 ms on the 2-core VM this is built on (a one-chunk segment
# via CpuWorker minus the same call made directly); CUDA adds the two small copies and a sync.
CPU_HOP_MS = 0.1
PREFETCH_CHUNK_BYTES = 8 << 20  # the runtime issues prefetches in chunks of about this many bytes (whole rows)

# (bottom on the CPU, miss on the CPU, prefetch) of every placement rule a layer may take
PLACEMENTS = np.array([(b, m, p) for p in (True, False) for m in (False, True) for b in (False, True)], bool)
LINK_ONLY = ~PLACEMENTS[:, 0] & ~PLACEMENTS[:, 1]


def placement_index(bottom_cpu: bool, miss_cpu: bool, prefetch: bool) -> int:
    """The row of PLACEMENTS with these three rules."""
    return int(np.nonzero((PLACEMENTS == (bool(bottom_cpu), bool(miss_cpu), bool(prefetch))).all(axis=1))[0][0])


@dataclass
class CostModel:
    """Everything the per-layer cost needs. Curves per policy `p`, layer `l` and slots `C = 0..E`."""

    hit: np.ndarray            # float [P, L, E+1] (or [L, E+1]: one policy)
    accuracy: np.ndarray       # float [L], predictor recall per layer
    expert_bytes: int          # S
    top_k: int                 # k
    bw: float                  # link bytes per ms
    expert_ms: float           # c_e
    dense_ms: float            # c_d
    other_ms: float = 0.0      # per token outside MoE layers
    guesses: int = 0           # g (0: top_k)
    ratios: np.ndarray = None  # float [M], ratio of split m (index 0..M-1); last is 1.0
    slot_units: np.ndarray = None  # int [M], budget units of one slot at split m
    unit_bytes: int = 1
    admit: np.ndarray = None   # float [P, L, E+1], misses admitted per activation (None: every miss, 1 - hit)
    policies: tuple = ("",)    # the policy of each curve
    cpu_bw: float = 0.0        # CPU expert bytes per ms (0: no CPU path)
    cpu_hop_ms: float = CPU_HOP_MS
    chunk_bytes: float = PREFETCH_CHUNK_BYTES  # q (inf: FIFO, wrong guesses are never dropped)
    placements: np.ndarray = None  # bool [len(PLACEMENTS)], the rules allowed (None: all the CPU permits)

    def __post_init__(self):
        self.hit = np.clip(np.asarray(self.hit, float), 0.0, 1.0)
        if self.hit.ndim == 2:
            self.hit = self.hit[None]
        self.admit = 1.0 - self.hit if self.admit is None else np.asarray(self.admit, float).reshape(self.hit.shape)
        self.admit = np.clip(self.admit, 0.0, 1.0 - self.hit)
        if len(self.policies) != self.hit.shape[0]:
            self.policies = tuple(self.policies) * self.hit.shape[0] if len(self.policies) == 1 else self.policies
        self.accuracy = np.clip(np.asarray(self.accuracy, float) * np.ones(self.num_layers), 0.0, 1.0)
        self.guesses = self.guesses or self.top_k
        if self.ratios is None:
            self.ratios = np.arange(1, SPLIT_CHUNKS + 1) / SPLIT_CHUNKS
            self.unit_bytes = max(1, self.expert_bytes // SPLIT_CHUNKS)
            self.slot_units = np.arange(1, SPLIT_CHUNKS + 1)
        self.ratios = np.asarray(self.ratios, float)
        self.slot_units = np.asarray(self.slot_units, np.int64)
        if self.placements is None:
            self.placements = np.ones(len(PLACEMENTS), bool)
        self.placements = np.asarray(self.placements, bool) & (LINK_ONLY | (self.cpu_bw > 0))

    @property
    def num_layers(self) -> int:
        return self.hit.shape[1]

    @property
    def num_experts(self) -> int:
        return self.hit.shape[2] - 1

    @property
    def first_window(self) -> float:
        return self.dense_ms

    def parts(self, l, h, a, r, place) -> "LayerParts":
        """What a layer's cost needs besides its window: layer `l` (an int, or an index array
        broadcasting with the rest) at hit rate h, admission rate a, ratio r, placement `place`
        (index into PLACEMENTS); all broadcast as arrays."""
        h, a, r = (np.asarray(v, float) for v in (h, a, r))
        b_cpu, m_cpu, pf = (PLACEMENTS[np.asarray(place), i] for i in range(3))
        k, S = self.top_k, self.expert_bytes
        bottoms, out = (h + a) * (1.0 - r), np.maximum(0.0, 1.0 - h - a)
        link = a * r + np.where(b_cpu, 0.0, bottoms) + np.where(m_cpu, 0.0, out)
        X, Y = k * S * link, k * S * (np.where(b_cpu, bottoms, 0.0) + np.where(m_cpu, out, 0.0))
        compute, hidden = k * self.expert_ms * (h * r + link), k * h * r * self.expert_ms
        cpu_ms = np.where(Y > 0, Y / max(self.cpu_bw, 1e-30) + self.cpu_hop_ms, 0.0)
        idle = np.maximum(compute + np.maximum(0.0, X / self.bw - hidden), cpu_ms) - X / self.bw
        shape = np.broadcast(X, hidden, cpu_ms, pf, np.asarray(l)).shape
        fields = (X, Y, np.where(pf, X * (self.guesses / self.top_k), 0.0),
                  np.minimum(1.0, self.accuracy[l] * k / self.guesses), compute, hidden, cpu_ms, self.dense_ms + idle)
        return LayerParts(*(np.broadcast_to(v, shape) for v in fields))

    def time(self, x: "LayerParts", window) -> tuple[np.ndarray, np.ndarray]:
        """(ms, link bytes moved) of layers `x` given their prefetch windows (broadcast)."""
        arrived = np.minimum(x.traffic, np.asarray(window) * self.bw)
        late = np.minimum(self.chunk_bytes, x.traffic - arrived) * (1.0 - x.right)
        fetch = (x.X - x.right * arrived + late) / self.bw
        moe = np.maximum(x.compute + np.maximum(0.0, fetch - x.hidden), x.cpu_ms)
        return self.dense_ms + moe, x.X - x.right * arrived + arrived + late

    def layer(self, l, h, a, r, place, window) -> dict:
        """Cost of layer `l` (see `parts`) with prefetch window `window`. Returns arrays: ms, the
        window it leaves the next layer, link bytes moved, CPU bytes."""
        x = self.parts(l, h, a, r, place)
        ms, moved = self.time(x, window)
        return {"ms": ms, "window": x.window, "bytes": moved, "cpu_bytes": x.Y}

    def evaluate(self, policy, slots, split, place) -> dict:
        """Per-layer and total cost of a layout: per layer a curve index, slots, split index, placement."""
        out = {"layers": [], "ms_per_token": self.other_ms, "bytes_per_token": 0.0, "cpu_bytes_per_token": 0.0}
        window = self.first_window
        for l, (p, c, m, q) in enumerate(zip(policy, slots, split, place)):
            h, a = self.hit[p, l, c], self.admit[p, l, c]
            x = self.layer(l, h, a, self.ratios[m], q, window)
            out["layers"].append({"hit_rate": float(h), "admit_rate": float(a), "ms": float(x["ms"]),
                                  "bytes_per_token": float(x["bytes"]), "cpu_bytes_per_token": float(x["cpu_bytes"])})
            out["ms_per_token"] += float(x["ms"])
            out["bytes_per_token"] += float(x["bytes"])
            out["cpu_bytes_per_token"] += float(x["cpu_bytes"])
            window = float(x["window"])
        return out


@dataclass
class LayerParts:
    """A layer's cost before its prefetch window is known; arrays of one shape (bytes, ms)."""

    X: np.ndarray        # link bytes it needs
    Y: np.ndarray        # bytes the CPU reads
    traffic: np.ndarray  # prefetch bytes queued for it (0: no prefetch)
    right: np.ndarray    # share of the prefetched bytes that are right guesses
    compute: np.ndarray  # GPU ms of its segments
    hidden: np.ndarray   # GPU ms that needs nothing from the link (tops of hits)
    cpu_ms: np.ndarray   # CPU ms
    window: np.ndarray   # the window it leaves the next layer (ms)

    def take(self, idx) -> "LayerParts":
        return LayerParts(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


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
                     dtype: str = "float16", compute_ms: dict | None = None, guesses: int = 0, admit=None,
                     policies=("",), cpu_gbps: float = 0.0, chunk_bytes: float = PREFETCH_CHUNK_BYTES,
                     placements=None) -> CostModel:
    """A CostModel with the spec's real slot sizes (split ratios in steps of about I/16, as `layout`
    rounds them). `cpu_gbps`: CPU expert throughput in GB/s of weight bytes (0: no CPU path)."""
    if bandwidth_gbps <= 0:
        raise bad("bandwidth_gbps", bandwidth_gbps)
    if not cpu_gbps >= 0:
        raise bad("cpu_gbps", cpu_gbps)
    I, rb = spec.intermediate_size, spec.row_bytes(quant, dtype)
    chunk_rows = split_step(I)
    rows = sorted({split_rows(I, m / SPLIT_CHUNKS) for m in range(1, SPLIT_CHUNKS + 1)})
    expert_ms, dense_ms, other_ms = compute_times(spec, quant, dtype, compute_ms)
    return CostModel(hit=hit, accuracy=accuracy, expert_bytes=spec.expert_bytes(quant, dtype), top_k=spec.top_k,
                     bw=bandwidth_gbps * 1e6, expert_ms=expert_ms, dense_ms=dense_ms, other_ms=other_ms,
                     guesses=guesses, ratios=np.array([n / I for n in rows]),
                     slot_units=np.array([-(-n // chunk_rows) for n in rows]), unit_bytes=chunk_rows * rb,
                     admit=admit, policies=tuple(policies), cpu_bw=cpu_gbps * 1e6, chunk_bytes=chunk_bytes,
                     placements=placements)
