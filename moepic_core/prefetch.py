"""Prefetcher: guess the next MoE layer's experts while the current one computes.

The guess for layer l+1 is layer l+1's own router applied to layer l's MoE input (the family's
exact selection rule, called without module hooks so recorded router outputs stay clean), plus
`extra` next-best experts by router logit. Guesses wait in `pending` until their layer's true
routing arrives; precision and recall are counted there (stats.LayerStats.record_guess).
"""
from __future__ import annotations

import torch
from torch import nn


class Prefetcher:
    def __init__(self, routers: list[nn.Module], top_k: int, extra: int = 0, enabled: bool = True):
        self.routers, self.top_k, self.extra, self.enabled = routers, top_k, extra, enabled
        self.pending: dict[int, list[int]] = {}

    @property
    def width(self) -> int:
        """Guesses per layer."""
        return self.top_k + self.extra

    def guess(self, nxt: int, x: torch.Tensor) -> list[int]:
        """Experts layer `nxt` is expected to use for the single token `x` [1, H]; remembered as pending."""
        router = self.routers[nxt]
        with torch.no_grad():
            _, _, chosen = type(router).forward(router, x)
            guess = chosen[0].tolist()
            if self.extra:
                logits = nn.functional.linear(x.reshape(-1, x.shape[-1]), router.weight)[0]
                ranked = logits.topk(min(len(logits), self.width)).indices.tolist()
                guess += [e for e in ranked if e not in guess][:self.extra]
        self.pending[nxt] = guess
        return guess

    def take(self, pos: int) -> list[int] | None:
        """The pending guess for layer `pos`, if any (consumed)."""
        return self.pending.pop(pos, None)

    def clear(self) -> None:
        self.pending.clear()
