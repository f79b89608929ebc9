"""Prefetcher: guess the next MoE layer's experts while the current one computes.

The guess for layer l+1 is layer l+1's own router applied to layer l's MoE input (the family's
exact selection rule, called without module hooks so recorded router outputs stay clean), plus
`extra` next-best experts by router logit. Guesses wait in `pending` until their layer's true
routing arrives; the layer's LayerStep carries it, and the counters count precision and recall from it.
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


class LinkQueue:
    """Prefetched bytes wait here for the link, in chunks of about `chunk_bytes` (whole rows), and go
    out a few at a time, so a guess the router proves wrong is dropped before its bytes move.

    On CUDA `pump` keeps at most `inflight` chunks on the copy stream (events tell which finished):
    fetches a layer really needs queue behind those, never behind a whole wrong expert. On the CPU
    copies are synchronous, so `pump` moves `per_pump` chunks a call, standing in for the time the
    link needs (the runtime pumps once after a layer's fetches and once per computed expert)."""

    def __init__(self, transfer, chunk_bytes: int, inflight: int = 2, per_pump: int = 1):
        self.transfer, self.chunk_bytes = transfer, chunk_bytes
        self.inflight, self.per_pump = inflight, per_pump
        self.pending: dict = {}  # key -> list of (dst rows, src rows) chunks not yet issued
        self.issued: list = []   # events of chunks on the link (CUDA)
        self.last: dict = {}     # key -> event of its last issued chunk

    def add(self, key, dst: torch.Tensor, src: torch.Tensor, after=None) -> None:
        """Queue copying `src` (uint8 [n, row_bytes]) into `dst`, after event `after`."""
        rows = max(1, self.chunk_bytes // max(1, src.shape[1]))
        chunks = [(dst[a:a + rows], src[a:a + rows]) for a in range(0, src.shape[0], rows)]
        self.pending[key] = chunks
        self.last[key] = after

    def pump(self) -> list[tuple[object, int]]:
        """Issue queued chunks while the link has room; returns (key, bytes) of each chunk issued."""
        moved, budget = [], self.per_pump
        while self.pending:
            if self.transfer.cuda:
                self.issued = [e for e in self.issued if not e.query()]
                if len(self.issued) >= self.inflight:
                    break
            elif budget <= 0:
                break
            key = next(iter(self.pending))
            moved.append((key, self._issue_one(key)))
            budget -= 1
        return moved

    def _issue_one(self, key) -> int:
        dst, src = self.pending[key].pop(0)
        event = self.transfer.copy(dst, src, after=self.last.get(key))
        self.last[key] = event
        if event is not None:
            self.issued.append(event)
        if not self.pending[key]:
            del self.pending[key]
        return src.numel()

    def finish(self, key) -> tuple[object, int]:
        """Issue what is left of `key` now (its layer needs it): (event of its last chunk, bytes)."""
        moved = 0
        while key in self.pending:
            moved += self._issue_one(key)
        return self.last.pop(key, None), moved

    def drop(self, key) -> tuple[object, int]:
        """Forget `key`'s chunks not yet issued: (event of its last issued chunk, bytes never moved)."""
        chunks = self.pending.pop(key, [])
        return self.last.pop(key, None), sum(src.numel() for _, src in chunks)

    def clear(self) -> None:
        self.pending.clear()
        self.last.clear()
        self.issued.clear()
