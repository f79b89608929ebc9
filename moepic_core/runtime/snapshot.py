"""Snapshot: a picture of the engine (model, budget, layout, cache, counters), typed, JSON-ready.

Built in one place (`Snapshot.of`, under the engine's lock), read by the CLI, the app's panels and
the API by attribute; `to_json()` gives the JSON the CLI writes (`--stats-json`) and `from_json`
reads it back. Plain Python.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..budget import Budget
from .stats import LayerStats, Totals, TokenRecord, ratio


@dataclass(frozen=True)
class LayerSnapshot:
    """One MoE layer: its plan, what its cache holds, the last step's experts, its counters since load."""
    layer: int  # the decoder-layer index (ModelSpec.moe_layers)
    budget_bytes: int
    split_ratio: float
    slots: int
    bottom_on: str
    miss_on: str
    prefetch: bool
    cached: tuple[str | None, ...]  # per expert: "top", "full" or None
    active: tuple[int, ...]  # the experts of the last step
    prefetched: tuple[int, ...]  # the guess made for the last step ((): none)
    hits: int
    misses: int
    top_hits: int
    full_hits: int
    bytes_fetched: int
    prefetch_bytes: int
    prefetch_wasted_bytes: int
    prefetch_dropped_bytes: int
    cpu_bytes: int
    prefetch_precision: float | None
    prefetch_recall: float | None
    predicted_hit_rate: float | None = None  # the solver's, when it laid the layer out

    @classmethod
    def of(cls, runtime, pos: int, predicted_hit_rate: float | None = None) -> "LayerSnapshot":
        plan, stats = runtime.layout.layers[pos], runtime.stats.layers[pos]
        counters = {f.name: getattr(stats, f.name) for f in fields(LayerStats) if f.name in _FIELDS}
        return cls(layer=runtime.spec.moe_layers[pos], budget_bytes=plan.budget_bytes, split_ratio=plan.split_ratio,
                   slots=plan.slots, bottom_on=plan.bottom_on, miss_on=plan.miss_on, prefetch=plan.prefetch,
                   cached=runtime.cache_states(pos), active=runtime.activity.active[pos],
                   prefetched=runtime.activity.guessed[pos], prefetch_precision=stats.precision,
                   prefetch_recall=stats.recall, predicted_hit_rate=predicted_hit_rate, **counters)

    @property
    def accesses(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        return ratio(self.hits, self.accesses)

    @property
    def full_hit_rate(self) -> float | None:
        return ratio(self.full_hits, self.accesses)

    @property
    def top_hit_rate(self) -> float | None:
        return ratio(self.top_hits, self.accesses)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "LayerSnapshot":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


_FIELDS = {f.name for f in fields(LayerSnapshot)}  # the LayerStats counters a LayerSnapshot shows


@dataclass(frozen=True)
class Snapshot:
    model: str
    family: str
    device: str
    cpu_mode: bool  # the device is the CPU
    mode: str  # "gpu", "simulated" or "in-place"
    kernels: str  # the expert kernels, in words
    dtype: str
    quant: str
    policy: str  # the policy running, in words (e.g. "auto: lcp")
    num_layers: int  # MoE layers
    num_experts: int
    top_k: int
    intermediate_size: int
    expert_bytes: int
    budgets: Budget
    layout_source: str  # "solver", "uniform", "all-resident", "no-cache", "in-place"
    prediction: dict  # the solver's: ms/token, per-layer hit rates, baselines ({} without a solver)
    layers: tuple[LayerSnapshot, ...]
    totals: Totals
    history: tuple[TokenRecord, ...]  # the last decode steps, oldest first

    @classmethod
    def of(cls, engine) -> "Snapshot":
        """The engine as it is now; call under its lock."""
        rt, spec = engine.runtime, engine.spec
        guesses = rt.layout.prediction.get("layers") or [{}] * spec.num_moe_layers
        return cls(
            model=spec.name, family=spec.family, device=str(engine.device), cpu_mode=engine.device.type == "cpu",
            mode=engine.mode, kernels=engine.kernels, dtype=engine.dtype, quant=engine.cfg.quant,
            policy=engine.policy_label(), num_layers=spec.num_moe_layers, num_experts=spec.num_experts,
            top_k=spec.top_k, intermediate_size=spec.intermediate_size,
            expert_bytes=spec.expert_bytes(engine.cfg.quant, engine.dtype), budgets=engine.budget,
            layout_source=rt.layout.source, prediction=rt.layout.prediction,
            layers=tuple(LayerSnapshot.of(rt, pos, guess.get("hit_rate")) for pos, guess in enumerate(guesses)),
            totals=rt.stats.totals(), history=tuple(rt.stats.history))

    @property
    def slots(self) -> int:
        """Cache slots over all layers."""
        return sum(layer.slots for layer in self.layers)

    @property
    def mean_top_share(self) -> float | None:
        """The mean split ratio of the layers that cache top segments (r < 1), None if none does."""
        ratios = [l.split_ratio for l in self.layers if l.slots and l.split_ratio < 1]
        return sum(ratios) / len(ratios) if ratios else None

    def to_json(self) -> dict:
        plain = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name not in ("budgets", "layout_source", "prediction", "layers", "totals", "history")}
        return {**plain, "budgets": self.budgets.to_dict(),
                "layout": {"source": self.layout_source, "prediction": self.prediction},
                "layers": [l.to_json() for l in self.layers], "totals": self.totals.to_json(),
                "history": [h.to_json() for h in self.history]}

    @classmethod
    def from_json(cls, data: dict) -> "Snapshot":
        data = dict(data)
        budgets = {k: v for k, v in data.pop("budgets").items() if k != "min_vram_bytes"}
        layout, layers = data.pop("layout"), data.pop("layers")
        totals, history = data.pop("totals"), data.pop("history")
        return cls(**data, budgets=Budget(**budgets), layout_source=layout["source"], prediction=layout["prediction"],
                   layers=tuple(map(LayerSnapshot.from_json, layers)), totals=Totals(**totals),
                   history=tuple(TokenRecord(**h) for h in history))
