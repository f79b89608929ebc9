"""Counters the engine keeps per MoE layer and per decoded token; plain Python."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

HISTORY = 256


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass
class LayerStats:
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
    active: list = field(default_factory=list)
    prefetched: list = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return _ratio(self.guessed_right, self.guessed)

    @property
    def recall(self) -> float | None:
        return _ratio(self.guessed_right, self.actual_predicted_steps)

    def record_guess(self, predicted: list[int], actual: list[int]) -> None:
        right = len(set(predicted) & set(actual))
        self.guessed_right += right
        self.guessed += len(predicted)
        self.actual_predicted_steps += len(actual)


@dataclass
class TokenCounter:
    """What one decode step did, summed over layers."""
    hits: int = 0
    top_hits: int = 0
    full_hits: int = 0
    misses: int = 0
    bytes: int = 0
    cpu_bytes: int = 0


class EngineStats:
    def __init__(self, num_layers: int):
        self.layers = [LayerStats() for _ in range(num_layers)]
        self.tokens = 0
        self.decode_seconds = 0.0
        self.history = collections.deque(maxlen=HISTORY)
        self.current = TokenCounter()

    def reset(self) -> None:
        self.__init__(len(self.layers))

    def record_access(self, pos: int, hits: int, misses: int, split: bool) -> None:
        layer, cur = self.layers[pos], self.current
        layer.hits += hits
        layer.misses += misses
        cur.hits += hits
        cur.misses += misses
        if split:
            layer.top_hits += hits
            cur.top_hits += hits
        else:
            layer.full_hits += hits
            cur.full_hits += hits

    def record_cpu(self, pos: int, nbytes: int) -> None:
        self.layers[pos].cpu_bytes += nbytes
        self.current.cpu_bytes += nbytes

    def record_bytes(self, pos: int, nbytes: int, prefetched: bool = False) -> None:
        self.layers[pos].bytes_fetched += nbytes
        if prefetched:
            self.layers[pos].prefetch_bytes += nbytes
        self.current.bytes += nbytes

    def end_token(self, seconds: float, decode: bool) -> None:
        """Close one forward step; decode steps go into the per-token history."""
        cur, self.current = self.current, TokenCounter()
        if not decode:
            return
        self.tokens += 1
        self.decode_seconds += seconds
        n = cur.hits + cur.misses
        self.history.append({
            "token": self.tokens, "hit_rate": _ratio(cur.hits, n) or 0.0,
            "top_hit_rate": _ratio(cur.top_hits, n) or 0.0, "full_hit_rate": _ratio(cur.full_hits, n) or 0.0,
            "bytes": cur.bytes, "cpu_bytes": cur.cpu_bytes, "tokens_per_s": 1.0 / seconds if seconds > 0 else 0.0,
        })

    def totals(self) -> dict:
        hits = sum(s.hits for s in self.layers)
        misses = sum(s.misses for s in self.layers)
        fetched = sum(s.bytes_fetched for s in self.layers)
        guessed = sum(s.guessed for s in self.layers)
        right = sum(s.guessed_right for s in self.layers)
        actual = sum(s.actual_predicted_steps for s in self.layers)
        recent = list(self.history)[-32:]
        recent_s = sum(1.0 / h["tokens_per_s"] for h in recent if h["tokens_per_s"] > 0)
        return {
            "tokens": self.tokens,
            "tokens_per_s": len(recent) / recent_s if recent_s else 0.0,
            "hit_rate": _ratio(hits, hits + misses) or 0.0,
            "top_hits": sum(s.top_hits for s in self.layers),
            "full_hits": sum(s.full_hits for s in self.layers),
            "hits": hits, "misses": misses,
            "bytes_fetched": fetched,
            "bytes_per_token": sum(h["bytes"] for h in recent) / len(recent) if recent else 0.0,
            "cpu_bytes_per_token": sum(h["cpu_bytes"] for h in recent) / len(recent) if recent else 0.0,
            "effective_bandwidth_gbps": (sum(h["bytes"] for h in recent) / recent_s / 1e9) if recent_s else 0.0,
            "prefetch_precision": _ratio(right, guessed),
            "prefetch_recall": _ratio(right, actual),
        }
