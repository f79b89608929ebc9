"""Layout: each MoE layer's expert-cache budget and split ratio, and the slots that follow from them."""
from __future__ import annotations

from dataclasses import dataclass, field

from .spec import chunk_neurons

SPLIT_CHUNKS = 16  # split ratios are multiples of about 1/16 of the intermediate size


def split_step(intermediate_size: int) -> int:
    """Neurons per split step: about I/16, a multiple of the kernels' chunk (32 neurons)."""
    unit = chunk_neurons(intermediate_size)
    return max(unit, intermediate_size // SPLIT_CHUNKS // unit * unit)


def split_rows(intermediate_size: int, ratio: float) -> int:
    """Rows (neurons) in a top segment at `ratio`, rounded to a whole step, at least one step."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"split ratio must be in (0, 1], got {ratio}")
    step = split_step(intermediate_size)
    rows = max(step, round(ratio * intermediate_size / step) * step)
    return min(rows, intermediate_size)


@dataclass(frozen=True)
class LayerPlan:
    budget_bytes: int
    split_ratio: float
    slots: int

    def to_dict(self) -> dict:
        return {"budget_bytes": self.budget_bytes, "split_ratio": self.split_ratio, "slots": self.slots}


@dataclass
class Layout:
    """One LayerPlan per MoE layer (in order of `ModelSpec.moe_layers`)."""

    layers: list[LayerPlan]
    source: str = "uniform"  # "uniform" | "solver" | "all-resident"
    prediction: dict = field(default_factory=dict)  # the solver's predicted ms/token, hit rates, baselines

    @property
    def total_bytes(self) -> int:
        return sum(p.budget_bytes for p in self.layers)

    def to_dict(self) -> dict:
        return {"source": self.source, "layers": [p.to_dict() for p in self.layers], "prediction": self.prediction}


def plan_layer(budget_bytes: int, ratio: float, intermediate_size: int, row_bytes: int, num_experts: int) -> LayerPlan:
    """Slots that fit in `budget_bytes` at `ratio`, capped at one per expert; the budget is what they use."""
    rows = split_rows(intermediate_size, ratio)
    slot_bytes = rows * row_bytes
    slots = min(num_experts, max(0, budget_bytes) // slot_bytes)
    return LayerPlan(budget_bytes=slots * slot_bytes, split_ratio=rows / intermediate_size, slots=slots)


def uniform_layout(cache_bytes: int, num_layers: int, ratio: float, intermediate_size: int, row_bytes: int,
                   num_experts: int) -> Layout:
    """The cache budget split evenly over layers, every layer at the same ratio."""
    per_layer = max(0, cache_bytes) // max(1, num_layers)
    plans = [plan_layer(per_layer, ratio, intermediate_size, row_bytes, num_experts) for _ in range(num_layers)]
    return Layout(plans, source="uniform")
