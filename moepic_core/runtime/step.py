"""LayerStep: what one MoE layer did in one forward step, the one record of it.

The runtime (offload.py) emits one LayerStep per MoE layer per forward step, once the layer's output
is computed. Three readers consume it and nothing else writes what they keep: the counters
(stats.EngineStats), the trace recorder (trace.TraceRecorder) and the live view of the cache
(`CacheActivity`: the experts active and guessed in the last step, for the heatmap). Plain Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Routing:
    """The router's choice for one MoE layer in one forward step."""
    rows: tuple[tuple[int, ...], ...]  # [T][k]: per token, the chosen experts in the router's order

    @classmethod
    def of(cls, rows: list[list[int]]) -> "Routing":
        return cls(tuple(map(tuple, rows)))

    @property
    def one_token(self) -> bool:
        """A decode step (or a one-token prompt): no gather/scatter, a guess for the next layer, a trace row."""
        return len(self.rows) == 1

    @cached_property
    def experts(self) -> list[int]:
        """The experts any token chose, ascending (eager's order)."""
        return sorted({e for row in self.rows for e in row})


@dataclass(frozen=True)
class LayerStep:
    pos: int                       # the MoE layer (index into ModelSpec.moe_layers)
    routing: Routing
    hits: int                      # needed experts the cache held (counted before any admission)
    misses: int
    split: bool                    # the layer caches top segments: its hits are top hits, else full hits
    guess: tuple[int, ...] | None  # the prefetcher's guess for this layer (made while the one before ran)
    link_bytes: int = 0            # fetched on demand over the link
    cpu_bytes: int = 0             # expert rows computed on the CPU from the host store
    prefetch_used_bytes: int = 0   # moved for a guess this step proved right (its rows are used)
    prefetch_wasted_bytes: int = 0  # moved over the link for a guess that turned out wrong
    prefetch_dropped_bytes: int = 0  # a wrong guess's bytes dropped before they moved

    @property
    def moved_bytes(self) -> int:
        """Everything that crossed the link for this layer in this step."""
        return self.link_bytes + self.prefetch_used_bytes + self.prefetch_wasted_bytes

    @property
    def prefetch_bytes(self) -> int:
        """The part of `moved_bytes` a guess moved, right or wrong."""
        return self.prefetch_used_bytes + self.prefetch_wasted_bytes

    @property
    def guessed_right(self) -> int:
        """Guessed experts the router chose: |guess ∩ chosen|."""
        return len(set(self.guess or ()) & set(self.routing.experts))


class CacheActivity:
    """What the heatmap marks besides the cache: per MoE layer, the experts of the last step and the
    guess made for it (empty when that step had none)."""

    def __init__(self, num_layers: int):
        self.active: list[tuple[int, ...]] = [()] * num_layers
        self.guessed: list[tuple[int, ...]] = [()] * num_layers

    def add(self, step: LayerStep) -> None:
        self.active[step.pos] = tuple(step.routing.experts)
        self.guessed[step.pos] = step.guess or ()
