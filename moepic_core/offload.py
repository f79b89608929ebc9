"""ExpertRuntime: the offloaded experts forward of every MoE layer.

Per forward step and MoE layer `pos` (the `pos`-th MoE layer):
  1. the router's choice (transformers' own router ran already) gives the step's experts;
  2. the CacheDirectory counts hits before admitting anything and decides admissions/evictions;
  3. what the pool lacks is fetched into staging: the bottom rows `[r*I, I)` of a hit when the
     layer is split, the whole expert on a miss (unless a guess for this layer already fetched it);
  4. on a decode step, layer `pos+1`'s router applied to this layer's input guesses the next
     layer's experts, and their missing bytes are queued behind this layer's fetches;
  5. experts are computed in eager's order (ascending id) by the ExpertKernel (kernels.py): the
     top segment from the pool slot while the bottom may still be in flight, then the bottom; a
     missed expert that was admitted has its top rows copied from staging into its slot after use.
On CUDA, fetches run on a copy stream and compute waits on per-buffer events; the only host sync
is reading the router's choice (step 1), where the data is consumed.

In place (a real model on a CPU-only machine): every expert is resident where it already lies,
in the memory-mapped store; the "slots" are the store's own bytes, so nothing is ever copied and
every access is a hit. The simulated mode (CPU, a VRAM-sized budget) runs the cache path above
with RAM buffers, to show the cache at work.
"""
from __future__ import annotations

import torch
from torch import nn

from .cache import CacheDirectory, make_policy
from .cache.pool import SlotPool, Staging, Transfer
from .kernels import SILU, Activation, ExpertKernel
from .layout import Layout
from .prefetch import Prefetcher
from .stats import EngineStats


class OffloadedExperts(nn.Module):
    """Drop-in for a transformers `*Experts` module: same call, weights served by the runtime."""

    def __init__(self, runtime: "ExpertRuntime", pos: int):
        super().__init__()
        self.pos = pos
        self._runtime = [runtime]  # a list, so nn.Module does not register it

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return self._runtime[0].forward(self.pos, hidden_states, top_k_index, top_k_weights)


class ExpertRuntime:
    def __init__(self, store, routers: list[nn.Module], device: torch.device, compute_dtype: torch.dtype,
                 policy: str = "lcp", policy_params: dict | None = None, prefetch: bool = True,
                 prefetch_extra: int = 0, activation: Activation = SILU, in_place: bool = False):
        self.store, self.spec = store, store.spec
        self.routers = routers
        self.device, self.compute_dtype = device, compute_dtype
        self.num_layers = self.spec.num_moe_layers
        self.I, self.H = self.spec.intermediate_size, self.spec.hidden_size
        self.kernel = ExpertKernel(store.quant, store.dtype, self.H, self.I, device, compute_dtype, activation)
        # biased experts (GPT-OSS): the small bias table lives where the kernel computes
        self.biases = None if store.biases is None else store.biases.to(device)
        self.in_place = in_place
        self.prefetcher = Prefetcher(routers, self.spec.top_k, prefetch_extra, enabled=prefetch and not in_place)
        self.transfer = Transfer(device)
        n_staging = 0 if in_place else self.staging_buffers(self.spec.top_k, prefetch_extra)
        self.staging = Staging(n_staging, self.I, store.row_bytes, device)
        self.stats = EngineStats(self.num_layers)
        self.recording: list | None = None  # decode-step routing rows when recording a trace
        self.policy_name, self.policy_params = policy, dict(policy_params or {})
        self.pool = self.directory = self.layout = None

    @staticmethod
    def staging_buffers(top_k: int, prefetch_extra: int) -> int:
        """One token's worst case: this layer's k experts plus the next layer's guesses in flight."""
        return 2 * (top_k + prefetch_extra)

    # --- layout -------------------------------------------------------------------------------
    def configure(self, layout: Layout, policy: str | None = None, policy_params: dict | None = None) -> None:
        """(Re)lay out the pools. With `policy`, start a fresh policy and directory; without, keep the
        policy's state and the best cached experts that still fit."""
        if len(layout.layers) != self.num_layers:
            raise ValueError(f"layout has {len(layout.layers)} layers, model has {self.num_layers} MoE layers")
        slots = [p.slots for p in layout.layers]
        if self.in_place and any(p.slots < self.spec.num_experts or p.split_ratio < 1 for p in layout.layers):
            raise ValueError("the in-place mode keeps every expert whole where it lies; use the simulated mode "
                             "for a smaller cache")
        self.pool = None
        self.staging.clear()
        self.prefetcher.clear()
        self.pool = SlotPool(layout, self.I, self.store.row_bytes, self.device, allocate=not self.in_place)
        self.layout = layout
        if policy is not None or self.directory is None:
            if policy is not None:
                self.policy_name, self.policy_params = policy, dict(policy_params or {})
            pol = make_policy(self.policy_name, self.num_layers, self.spec.num_experts, **self.policy_params)
            self.directory = CacheDirectory(slots, pol)
            self.directory.warm_start()
        else:
            self.directory.resize(slots, keep=True)
        for pos, n in enumerate(slots):
            if n >= self.spec.num_experts and len(self.directory.cached(pos)) < n:
                self.directory.access(pos, range(self.spec.num_experts))  # everything fits: all resident
            if self.in_place:
                continue
            for expert, slot in self.directory.cached(pos).items():
                self.pool.slot(pos, slot).copy_(self.store.rows(pos, expert, 0, self.pool.rows[pos]))

    def is_split(self, pos: int) -> bool:
        return 0 < self.pool.rows[pos] < self.I

    # --- forward ------------------------------------------------------------------------------
    def forward(self, pos, x, top_k_index, top_k_weights):
        routing = top_k_index.tolist()  # host sync: the fetches depend on it
        experts = sorted({e for row in routing for e in row})
        if pos == 0:
            self.directory.step()
            if self.recording is not None and len(routing) == 1:
                self.recording.append(([[-1] * self.spec.top_k for _ in range(self.num_layers)],
                                       [[-1] * self.prefetcher.width] * self.num_layers))
        if self.recording is not None and len(routing) == 1 and self.recording:
            self.recording[-1][0][pos] = list(routing[0])
        access = self.directory.access(pos, experts)
        self.stats.record_access(pos, len(access.hits), len(access.misses), self.is_split(pos))
        layer_stats = self.stats.layers[pos]
        layer_stats.active = experts
        guess = self.prefetcher.take(pos)
        if guess is not None:
            layer_stats.record_guess(guess, experts)

        top = self.pool.rows[pos]
        needed = {e: (top if e in access.hits else 0) for e in experts if e not in access.hits or top < self.I}
        for (p, e), entry in list(self.staging.entries.items()):
            if p == pos and (e not in needed or entry.start > needed[e]):
                self.staging.release((p, e))
                self.stats.layers[pos].prefetch_wasted_bytes += entry.nbytes
        queue = [e for e in needed if (pos, e) not in self.staging.entries]
        issued = self._issue(pos, queue, 0, needed)
        if len(routing) == 1 and issued == len(queue) and pos + 1 < self.num_layers:
            fetch = self.prefetcher.enabled and self._fetches_possible(pos + 1)
            if fetch or self.recording is not None:
                self._prefetch(pos + 1, x, fetch)

        single = len(routing) == 1  # decode: skip the gather/scatter, same arithmetic as eager
        out = None if single else torch.zeros_like(x)
        hit_mask = top_k_index.t()  # [K, T], as eager walks it
        for e in experts:
            if single:
                xs = x
            else:
                k_pos, tok = torch.where(hit_mask == e)
                xs = x[tok]
            y = None
            slot = access.hits.get(e)
            if slot is not None:
                y = self.kernel.segment(xs, self._slot_rows(pos, e, slot), self._bias(pos, e, 0, top))
            if e in needed:
                entry = self.staging.entries[(pos, e)]
                self.transfer.wait(entry.ready)
                part = self.kernel.segment(xs, self.staging.rows(entry, needed[e], self.I),
                                           self._bias(pos, e, needed[e], self.I))
                y = part if y is None else y + part
                if e in access.admitted:
                    self.pool.slot(pos, access.admitted[e]).copy_(self.staging.rows(entry, 0, top))
                self.staging.release((pos, e), self.transfer.mark())
                issued = self._issue(pos, queue, issued, needed)
            if self.biases is not None:  # the down bias: once per expert, never per segment
                y = y + self.biases[pos, e, 2 * self.I:].to(y.dtype)
            if single:
                y = (y * top_k_weights[0, routing[0].index(e)]).to(x.dtype)
                out = y if out is None else out + y
            else:
                y = y * top_k_weights[tok, k_pos, None]
                out.index_add_(0, tok, y.to(out.dtype))
        return out

    def _bias(self, pos: int, expert: int, start: int, stop: int) -> torch.Tensor | None:
        """fp32 [stop - start, 2]: gate/up biases of neurons [start, stop), or None (unbiased experts)."""
        if self.biases is None:
            return None
        return self.biases[pos, expert, 2 * start:2 * stop].view(-1, 2)

    def _slot_rows(self, pos: int, expert: int, slot: int) -> torch.Tensor:
        """The cached top rows of `expert`: its pool slot, or in place its bytes in the store."""
        if self.in_place:
            return self.store.rows(pos, expert, 0, self.I)
        return self.pool.slot(pos, slot)

    def _issue(self, pos: int, queue: list[int], issued: int, needed: dict[int, int]) -> int:
        """Queue fetches for `queue[issued:]` while staging buffers are free; returns the new count."""
        while issued < len(queue) and self.staging.free:
            e = queue[issued]
            src = self.store.rows(pos, e, needed[e], self.I)
            self.staging.fetch((pos, e), src, needed[e], self.transfer)
            self.stats.record_bytes(pos, src.numel())
            issued += 1
        return issued

    def _fetches_possible(self, pos: int) -> bool:
        """False when layer `pos` holds every expert whole: a guess could not save a byte."""
        return self.pool.rows[pos] < self.I or self.pool.slots[pos] < self.spec.num_experts

    def _prefetch(self, nxt: int, x: torch.Tensor, fetch: bool) -> None:
        """Guess layer `nxt`'s experts and, if `fetch`, queue what the pool lacks of them."""
        guess = self.prefetcher.guess(nxt, x)
        self.stats.layers[nxt].prefetched = guess
        if self.recording:
            self.recording[-1][1][nxt] = guess + [-1] * (self.prefetcher.width - len(guess))
        if not fetch:
            return
        cached = self.directory.cached(nxt)
        top = self.pool.rows[nxt]
        for e in guess:
            start = top if e in cached else 0
            if start >= self.I or (nxt, e) in self.staging.entries or not self.staging.free:
                continue
            src = self.store.rows(nxt, e, start, self.I)
            self.staging.fetch((nxt, e), src, start, self.transfer, prefetched=True)
            self.stats.record_bytes(nxt, src.numel(), prefetched=True)

    # --- reporting ----------------------------------------------------------------------------
    def layer_snapshot(self, pos: int) -> dict:
        s = self.stats.layers[pos]
        plan = self.layout.layers[pos]
        state = "top" if self.is_split(pos) else "full"
        cached = [None] * self.spec.num_experts
        for e in self.directory.cached(pos):
            cached[e] = state
        return {
            "layer": self.spec.moe_layers[pos], "budget_bytes": plan.budget_bytes, "split_ratio": plan.split_ratio,
            "slots": plan.slots, "cached": cached, "active": list(s.active), "prefetched": list(s.prefetched),
            "hits": s.hits, "misses": s.misses, "top_hits": s.top_hits, "full_hits": s.full_hits,
            "bytes_fetched": s.bytes_fetched, "prefetch_bytes": s.prefetch_bytes,
            "prefetch_wasted_bytes": s.prefetch_wasted_bytes,
            "prefetch_precision": s.precision, "prefetch_recall": s.recall,
        }
