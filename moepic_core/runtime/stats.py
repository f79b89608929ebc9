"""Counters the engine keeps per MoE layer and per decoded token, summed from LayerSteps; plain Python."""
from __future__ import annotations

import collections
from dataclasses import asdict, dataclass

from .step import LayerStep

HISTORY = 256  # decode steps kept in the per-token history
RECENT = 32  # decode steps the per-token rates of the totals average over


def ratio(num: float, den: float) -> float | None:
    """num / den, or None when den is 0 (no accesses, no guesses)."""
    return num / den if den else None


@dataclass
class LayerStats:
    """Counters summed from LayerSteps: one MoE layer's since load (or the last explicit reset), or one
    forward step's over all layers (EngineStats.current)."""
    hits: int = 0
    misses: int = 0
    top_hits: int = 0
    full_hits: int = 0
    bytes_fetched: int = 0
    prefetch_bytes: int = 0
    prefetch_wasted_bytes: int = 0  # moved over the link for a guess that turned out wrong
    prefetch_dropped_bytes: int = 0  # a wrong guess's bytes dropped before they moved
    cpu_bytes: int = 0  # expert bytes computed on the CPU (hybrid execution)
    guessed_right: int = 0  # |predicted ∩ actual| summed over steps
    guessed: int = 0  # |predicted| summed
    actual_predicted_steps: int = 0  # |actual| summed over steps that had a guess

    @property
    def precision(self) -> float | None:
        return ratio(self.guessed_right, self.guessed)

    @property
    def recall(self) -> float | None:
        return ratio(self.guessed_right, self.actual_predicted_steps)

    def add(self, step: LayerStep) -> None:
        self.hits += step.hits
        self.misses += step.misses
        self.top_hits += step.hits if step.split else 0
        self.full_hits += 0 if step.split else step.hits
        self.bytes_fetched += step.moved_bytes
        self.prefetch_bytes += step.prefetch_bytes
        self.prefetch_wasted_bytes += step.prefetch_wasted_bytes
        self.prefetch_dropped_bytes += step.prefetch_dropped_bytes
        self.cpu_bytes += step.cpu_bytes
        if step.guess is not None:
            self.guessed_right += step.guessed_right
            self.guessed += len(step.guess)
            self.actual_predicted_steps += len(step.routing.experts)


@dataclass(frozen=True)
class TokenRecord:
    """One decode step in the history: rates are shares of the experts it activated."""
    token: int  # counting decode steps from the load (or the last reset)
    hit_rate: float
    top_hit_rate: float
    full_hit_rate: float
    bytes: int  # moved over the link
    cpu_bytes: int
    tokens_per_s: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Totals:
    """The engine's counters summed over layers; rates per token over the last RECENT decode steps."""
    tokens: int
    tokens_per_s: float
    hit_rate: float
    top_hits: int
    full_hits: int
    hits: int
    misses: int
    bytes_fetched: int
    bytes_per_token: float
    cpu_bytes_per_token: float
    effective_bandwidth_gbps: float
    prefetch_precision: float | None
    prefetch_recall: float | None

    def to_json(self) -> dict:
        return asdict(self)


class EngineStats:
    """The counters: per layer from LayerSteps (`add`), per token from the decode loop (`end_token`)."""

    def __init__(self, num_layers: int):
        self.layers = [LayerStats() for _ in range(num_layers)]
        self.tokens = 0
        self.decode_seconds = 0.0
        self.history: collections.deque[TokenRecord] = collections.deque(maxlen=HISTORY)
        self.current = LayerStats()  # this forward step, summed over layers

    def reset(self) -> None:
        self.__init__(len(self.layers))

    def add(self, step: LayerStep) -> None:
        self.layers[step.pos].add(step)
        self.current.add(step)

    def end_token(self, seconds: float, decode: bool) -> None:
        """Close one forward step; decode steps go into the per-token history."""
        cur, self.current = self.current, LayerStats()
        if not decode:
            return
        self.tokens += 1
        self.decode_seconds += seconds
        n = cur.hits + cur.misses
        self.history.append(TokenRecord(
            token=self.tokens, hit_rate=ratio(cur.hits, n) or 0.0, top_hit_rate=ratio(cur.top_hits, n) or 0.0,
            full_hit_rate=ratio(cur.full_hits, n) or 0.0, bytes=cur.bytes_fetched, cpu_bytes=cur.cpu_bytes,
            tokens_per_s=1.0 / seconds if seconds > 0 else 0.0))

    def totals(self) -> Totals:
        hits, misses = (sum(getattr(s, name) for s in self.layers) for name in ("hits", "misses"))
        guessed, right, actual = (sum(getattr(s, name) for s in self.layers)
                                  for name in ("guessed", "guessed_right", "actual_predicted_steps"))
        recent = list(self.history)[-RECENT:]
        recent_s = sum(1.0 / h.tokens_per_s for h in recent if h.tokens_per_s > 0)
        moved = sum(h.bytes for h in recent)
        return Totals(
            tokens=self.tokens, tokens_per_s=len(recent) / recent_s if recent_s else 0.0,
            hit_rate=ratio(hits, hits + misses) or 0.0, top_hits=sum(s.top_hits for s in self.layers),
            full_hits=sum(s.full_hits for s in self.layers), hits=hits, misses=misses,
            bytes_fetched=sum(s.bytes_fetched for s in self.layers),
            bytes_per_token=moved / len(recent) if recent else 0.0,
            cpu_bytes_per_token=sum(h.cpu_bytes for h in recent) / len(recent) if recent else 0.0,
            effective_bandwidth_gbps=moved / recent_s / 1e9 if recent_s else 0.0,
            prefetch_precision=ratio(right, guessed), prefetch_recall=ratio(right, actual))
