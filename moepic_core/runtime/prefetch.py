"""The prefetch, whole: guess the next MoE layer's experts while the current one computes, queue
what the split rule would fetch for them in chunks, keep a right guess's rows and drop a wrong one's.

  Prefetcher  the guess for layer l+1: layer l+1's own router applied to layer l's MoE input (the
              family's exact selection rule, called without module hooks so recorded router outputs
              stay clean), plus `extra` next-best experts by router logit. Guesses wait in `pending`
              until their layer's true routing arrives; the layer's LayerStep carries it, and the
              counters count precision and recall from it.
  LinkQueue   prefetched bytes wait for the link in chunks, so a wrong guess is dropped before its
              bytes move.
  Prefetch    the two together with the staging ring: `issue` after a layer's own fetches, `reconcile`
              when the guessed layer's routing arrives.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layout import ADMITTED, HIT, MISS, LayerPlan


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


def guess_rows(plan: LayerPlan, cached: bool, intermediate: int, cpu_ok: bool) -> tuple[int, int] | None:
    """The rows the runtime would fetch over the link for a guessed expert of a layer with `plan`: as a
    hit when it is `cached`; else as a miss the policy leaves out, or, where such a miss goes to the
    CPU, the top rows of an admission whose bottom goes there too (nothing where the slots are none)."""
    if cached:
        return plan.segments(HIT, intermediate, cpu_ok).link
    miss = plan.segments(MISS, intermediate, cpu_ok)
    if miss.link:
        return miss.link
    admitted = plan.segments(ADMITTED, intermediate, cpu_ok)
    return admitted.link if plan.slots and admitted.cpu else None


class Prefetch:
    """Guesses, their chunked copies and their staging buffers, from the guess to the proof."""

    def __init__(self, guesser: Prefetcher, link: LinkQueue, staging, store):
        self.guesser, self.link, self.staging, self.store = guesser, link, staging, store

    def issue(self, nxt: int, x: torch.Tensor, plan: LayerPlan, cached, cpu_ok: bool, worth: bool,
              record: bool) -> None:
        """Guess layer `nxt`'s experts (also when only a trace `record`s them); where its plan prefetches
        and a fetch could save bytes (`worth`), queue what the rules would fetch for each guess not yet
        staged while staging buffers are free. `cached`: layer `nxt`'s cached experts."""
        fetch = self.guesser.enabled and plan.prefetch and worth
        if not (fetch or record):
            return
        guess = self.guesser.guess(nxt, x)
        if not fetch:
            return
        for e in guess:
            rows = guess_rows(plan, e in cached, self.store.spec.intermediate_size, cpu_ok)
            if rows is None or (nxt, e) in self.staging.entries or not self.staging.free:
                continue
            entry = self.staging.reserve((nxt, e), rows[0], rows[1] - rows[0], self.store.row_bytes, prefetched=True)
            self.link.add((nxt, e), self.staging.target(entry), self.store.rows(nxt, e, *rows),
                          after=self.staging.free_after[entry.buffer])

    def reconcile(self, pos: int, needed: dict) -> dict[str, int]:
        """Keep layer `pos`'s staged rows the step needs (`needed`: expert -> rows it fetches over the
        link, or None), finishing their queued chunks; drop the rest. Staged rows of a layer are all
        prefetched (demand fetches are released as computed), so their bytes count here, where the
        guess proves right or wrong: LayerStep's prefetch_* fields."""
        used = wasted = dropped = 0
        for (p, e), entry in list(self.staging.entries.items()):
            if p != pos:
                continue
            rows = needed.get(e)
            if rows and entry.covers(*rows):
                event, _ = self.link.finish((p, e))
                entry.ready = event if event is not None else entry.ready
                used += entry.nbytes
                continue
            event, never_moved = self.link.drop((p, e))
            self.staging.release((p, e), event)
            dropped += never_moved
            wasted += entry.nbytes - never_moved
        return dict(prefetch_used_bytes=used, prefetch_wasted_bytes=wasted, prefetch_dropped_bytes=dropped)

    def clear(self) -> None:
        self.link.clear()
        self.guesser.clear()
