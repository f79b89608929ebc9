"""Layout: each MoE layer's expert-cache budget, split ratio, placement rule and cache policy.

What the runtime must do with a `LayerPlan`, per decode step of that layer (a "needed" expert is one
the router chose; its top segment is rows `[0, r*I)`, its bottom `[r*I, I)`; at `split_ratio` 1 the
top is the whole expert and there is no bottom):

  slots, split_ratio  `slots` VRAM slots of `r*I` rows each (`budget_bytes` in all).
  policy              the cache policy of this layer (a name registered in `cache.policies`); the
                      directory decides hits, admissions and evictions with it. "" = the engine's own.
  bottom_on  "link"   the bottom of a hit (and of an admitted miss) is fetched into staging and
                      computed on the GPU after its top (today's behaviour).
             "cpu"    the bottom is computed on the CPU from the host store, at the same time as the
                      GPU computes the top from the slot; nothing of the expert crosses the link.
                      Irrelevant (left "link") when `split_ratio` is 1 or `slots` is 0.
  miss_on    "link"   a miss the policy does not admit is fetched whole and computed on the GPU.
             "cpu"    a miss the policy does not admit is computed whole on the CPU from the host store.
             Either way a miss the policy admits has its top rows fetched over the link into its
             slot and computed on the GPU from there (its bottom follows `bottom_on`): the admission
             copy is paid once, whatever computes the rest.
  prefetch   True     while the previous layer runs, the guesses for this layer queue what the rules
                      above would fetch for them (bottoms when `bottom_on` is "link", whole misses when
                      `miss_on` is "link", else the top rows an admission needs), in chunks of about
                      `costmodel.PREFETCH_CHUNK_BYTES` (whole rows); when this layer's routing shows a
                      guess wrong, its chunks not yet started are dropped. Prefetched rows of an
                      expert that is needed are used whatever the rule says (the sum stays exact).
             False    no prefetch for this layer (its guesses may still be recorded for statistics).
The output is always the exact sum of the segments, whichever worker computed each. The defaults
(link, link, prefetch on, the engine's policy) are the runtime before the CPU path existed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import PlanError
from .options import bad
from .spec import chunk_neurons

SPLIT_CHUNKS = 16  # split ratios are multiples of about 1/16 of the intermediate size
WORKERS = ("link", "cpu")  # where a LayerPlan may put a segment's computation
HIT, ADMITTED, MISS = "hit", "admitted", "miss"  # what the cache directory made of a needed expert


def split_step(intermediate_size: int) -> int:
    """Neurons per split step: about I/16, a multiple of the kernels' chunk (32 neurons)."""
    unit = chunk_neurons(intermediate_size)
    return max(unit, intermediate_size // SPLIT_CHUNKS // unit * unit)


def split_rows(intermediate_size: int, ratio: float) -> int:
    """Rows (neurons) in a top segment at `ratio`, rounded to a whole step, at least one step."""
    if not 0.0 < ratio <= 1.0:
        raise bad("split", ratio)
    step = split_step(intermediate_size)
    rows = max(step, round(ratio * intermediate_size / step) * step)
    return min(rows, intermediate_size)


@dataclass(frozen=True)
class LayerPlan:
    budget_bytes: int
    split_ratio: float
    slots: int
    bottom_on: str = "link"  # "link" | "cpu": where the bottom segment of a cached expert is computed
    miss_on: str = "link"    # "link" | "cpu": where a miss the policy does not admit is computed
    prefetch: bool = True
    policy: str = ""         # this layer's cache policy ("": the engine's configured one)

    def __post_init__(self):
        for name in ("bottom_on", "miss_on"):
            if getattr(self, name) not in WORKERS:
                raise PlanError(f"LayerPlan.{name} must be one of {', '.join(WORKERS)}, got {getattr(self, name)!r}")

    def top_rows(self, intermediate_size: int) -> int:
        """The split rule: an expert's top segment is neurons [0, top), its bottom [top, I); 0 without slots."""
        return split_rows(intermediate_size, self.split_ratio) if self.slots else 0

    def segments(self, kind: str, intermediate_size: int, cpu_ok: bool,
                 staged: tuple[int, int] | None = None) -> Segments:
        """Where the rows of one needed expert are computed (the rules of the module doc). `kind`: HIT,
        ADMITTED or MISS; `cpu_ok`: a CPU worker runs; `staged`: rows a prefetch already holds in
        staging, used whatever the rule says (the CPU never recomputes rows the link brought)."""
        top, I = self.top_rows(intermediate_size), intermediate_size

        def to_cpu(where: str, needed: tuple[int, int]) -> bool:
            held = staged is not None and staged[0] <= needed[0] and needed[1] <= staged[1]
            return cpu_ok and where == "cpu" and not held

        if kind == HIT:
            if top >= I:
                return Segments()
            return Segments(cpu=(top, I)) if to_cpu(self.bottom_on, (top, I)) else Segments(link=(top, I))
        if kind == ADMITTED:
            if top < I and to_cpu(self.bottom_on, (0, I)):
                return Segments(link=(0, top), cpu=(top, I))
            return Segments(link=(0, I))
        return Segments(cpu=(0, I)) if to_cpu(self.miss_on, (0, I)) else Segments(link=(0, I))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Segments:
    """Rows [start, stop) of one needed expert beyond what its slot holds, by worker."""
    link: tuple[int, int] | None = None  # fetched over the link into staging, computed on the device
    cpu: tuple[int, int] | None = None   # computed on the CPU from the host store


@dataclass
class Layout:
    """One LayerPlan per MoE layer (in order of `ModelSpec.moe_layers`)."""

    layers: list[LayerPlan]
    source: str = "uniform"  # "uniform" | "solver" | "all-resident"
    prediction: dict = field(default_factory=dict)  # the solver's predicted ms/token, hit rates, baselines

    @property
    def total_bytes(self) -> int:
        return sum(p.budget_bytes for p in self.layers)

    def policy(self, default: str) -> tuple[str, dict]:
        """(name, params) of the policy the directory runs: one name if every layer shares it, else
        "per-layer" with each layer's name; layers without one take `default`."""
        names = [p.policy or default for p in self.layers]
        if len(set(names)) == 1:
            return names[0], {}
        return "per-layer", {"layers": names}

    def to_dict(self) -> dict:
        return {"source": self.source, "layers": [p.to_dict() for p in self.layers], "prediction": self.prediction}


def plan_layer(budget_bytes: int, ratio: float, intermediate_size: int, row_bytes: int, num_experts: int,
               **rules) -> LayerPlan:
    """Slots that fit in `budget_bytes` at `ratio`, capped at one per expert; the budget is what they
    use. `rules`: the other LayerPlan fields (placement, prefetch, policy)."""
    rows = split_rows(intermediate_size, ratio)
    slot_bytes = rows * row_bytes
    slots = min(num_experts, max(0, budget_bytes) // slot_bytes)
    return LayerPlan(budget_bytes=slots * slot_bytes, split_ratio=rows / intermediate_size, slots=slots, **rules)


def uniform_layout(cache_bytes: int, num_layers: int, ratio: float, intermediate_size: int, row_bytes: int,
                   num_experts: int) -> Layout:
    """The cache budget split evenly over layers, every layer at the same ratio."""
    per_layer = max(0, cache_bytes) // max(1, num_layers)
    plans = [plan_layer(per_layer, ratio, intermediate_size, row_bytes, num_experts) for _ in range(num_layers)]
    return Layout(plans, source="uniform")
