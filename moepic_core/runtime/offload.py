"""ExpertRuntime: the offloaded experts forward of every MoE layer, in named steps.

Per forward step and MoE layer `pos` (the `pos`-th MoE layer), `forward` runs:
  1. `_route`: the router's choice (transformers' own router ran already) as a `Routing`;
  2. the CacheDirectory counts hits before admitting anything and decides admissions/evictions;
  3. `plan_work`: per needed expert, its top rows from the pool slot on a hit; the rest over the
     link into staging or on the CPU from the host store, as the layer's split and placement rule
     says (`LayerPlan.segments`, layout.py: the rule's one home);
  4. `Prefetch.reconcile` (prefetch.py): prefetched rows that this step needs are kept, wrong guesses dropped;
  5. `_issue`: link fetches for what staging lacks; `_submit_cpu`: CPU segments start now, on the
     CPU worker, concurrently with everything below;
  6. `Prefetch.issue` (prefetch.py): on a one-token step, layer `pos+1`'s router applied to this
     layer's input guesses the next layer's experts; what the rule would fetch for them is queued in
     chunks on the LinkQueue, which a later wrong guess drops before its bytes move;
  7. `_compute`: experts in eager's order (ascending id) by the ExpertKernel (kernels.py): the top
     from the slot while the rest may still be in flight, then the fetched rows, then the CPU's
     result; the down bias once per expert; an admitted miss copies its top rows into its slot;
  8. `_emit`: the step's one record (`LayerStep`, step.py) goes to the counters, the live view of
     the cache and, while one is recorded, the routing trace.
The output is the exact sum of the segments whichever worker computed each. On CUDA, fetches run on
a copy stream and compute waits on per-buffer events; the host syncs to read the router's choice
and, when the CPU computes a segment, to hand it the hidden vector.

In place (a real model on a CPU-only machine): every expert is resident where it already lies,
in the memory-mapped store; the "slots" are the store's own bytes, so nothing is ever copied and
every access is a hit. The simulated mode (CPU, a VRAM-sized budget) runs the cache path above
with RAM buffers, to show the cache at work.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..budget import staging_experts
from ..cache import CacheDirectory, make_policy
from ..layout import ADMITTED, HIT, MISS, Layout
from ..plan.costmodel import PREFETCH_CHUNK_BYTES  # the chunks the solver assumes are the ones issued
from ..plan.trace import TraceRecorder
from .cpu_worker import CpuWorker
from .kernels import SILU, Activation, ExpertKernel
from .pool import SlotPool, Staging, Transfer
from .prefetch import LinkQueue, Prefetch, Prefetcher
from .stats import EngineStats
from .step import CacheActivity, LayerStep, Routing


@dataclass
class ExpertWork:
    """Where each segment of one needed expert is computed this step (rows are [start, stop))."""

    slot: int | None = None  # a hit: top rows [0, top) from this pool slot (in place: the store)
    link: tuple[int, int] | None = None  # rows fetched over the link into staging, computed on the device
    cpu: tuple[int, int] | None = None  # rows computed on the CPU from the host store
    admit: int | None = None  # an admitted miss: its top rows go from staging into this slot


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
        self.link = LinkQueue(self.transfer, PREFETCH_CHUNK_BYTES)
        n_staging = 0 if in_place else staging_experts(self.spec.top_k, prefetch_extra)
        self.staging = Staging(n_staging, self.I, store.row_bytes, device)
        self.prefetch = Prefetch(self.prefetcher, self.link, self.staging, store)
        self.stats = EngineStats(self.num_layers)
        self.activity = CacheActivity(self.num_layers)  # the last step's active and guessed experts
        self.recorder: TraceRecorder | None = None  # set while a routing trace is recorded
        self.policy_name, self.policy_params = policy, dict(policy_params or {})
        self.pool = self.directory = self.layout = None
        self.cpu_worker: CpuWorker | None = None

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
        self.prefetch.clear()
        self.staging.clear()
        self.pool = SlotPool(layout, self.I, self.store.row_bytes, self.device, allocate=not self.in_place)
        self.layout = layout
        self._start_cpu_worker(layout)
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

    def _start_cpu_worker(self, layout: Layout) -> None:
        """A CPU worker exists while some layer computes segments on the CPU."""
        wanted = not self.in_place and any("cpu" in (p.bottom_on, p.miss_on) for p in layout.layers)
        if wanted and self.cpu_worker is None:
            kernel = self.kernel if self.device.type == "cpu" else ExpertKernel(
                self.store.quant, self.store.dtype, self.H, self.I, torch.device("cpu"), self.compute_dtype,
                self.kernel.activation)
            threads = max(1, torch.get_num_threads() // 2) if self.device.type == "cpu" else None
            self.cpu_worker = CpuWorker(kernel, threads)
        elif not wanted and self.cpu_worker is not None:
            self.close()

    def close(self) -> None:
        if self.cpu_worker is not None:
            self.cpu_worker.close()
            self.cpu_worker = None

    def is_split(self, pos: int) -> bool:
        return 0 < self.pool.rows[pos] < self.I

    # --- forward ------------------------------------------------------------------------------
    def forward(self, pos, x, top_k_index, top_k_weights):
        routing = self._route(pos, top_k_index)
        access = self.directory.access(pos, routing.experts)
        guess = self.prefetcher.take(pos)
        work = self.plan_work(pos, access, routing.experts)
        prefetched = self.prefetch.reconcile(pos, {e: w.link for e, w in work.items()})
        queue = [e for e, w in work.items() if w.link and (pos, e) not in self.staging.entries]
        issued = self._issue(pos, queue, 0, work)
        cpu_jobs = self._submit_cpu(pos, work, x, top_k_index, routing)
        if routing.one_token and issued == len(queue) and pos + 1 < self.num_layers:
            self.prefetch.issue(pos + 1, x, self.layout.layers[pos + 1], self.directory.cached(pos + 1),
                                self.cpu_worker is not None, self._fetches_possible(pos + 1), self.recorder is not None)
        self.link.pump()
        out = self._compute(pos, x, routing, top_k_index, top_k_weights, work, cpu_jobs, queue, issued)
        self._emit(LayerStep(pos, routing, len(access.hits), len(access.misses), self.is_split(pos),
                             None if guess is None else tuple(guess),
                             link_bytes=self._rows_bytes(work[e].link for e in queue),
                             cpu_bytes=self._rows_bytes(w.cpu for w in work.values()), **prefetched))
        return out

    def _route(self, pos: int, top_k_index: torch.Tensor) -> Routing:
        routing = Routing.of(top_k_index.tolist())  # host sync: the fetches depend on it
        if pos == 0:
            self.directory.step()
        return routing

    def _emit(self, step: LayerStep) -> None:
        """Hand the layer's step record to its readers: the counters, the live view, the recorder."""
        self.stats.add(step)
        self.activity.add(step)
        if self.recorder is not None:
            self.recorder.add(step)

    def _rows_bytes(self, segments) -> int:
        """Bytes of the rows [start, stop) of `segments` (None: no rows)."""
        return sum(stop - start for start, stop in filter(None, segments)) * self.store.row_bytes

    def plan_work(self, pos: int, access, experts: list[int]) -> dict[int, ExpertWork]:
        """Per needed expert: its slot on a hit, its slot-to-be on an admission, and the rest of its
        rows as the layer's split and placement rule says (LayerPlan.segments, layout.py)."""
        plan, cpu_ok = self.layout.layers[pos], self.cpu_worker is not None
        work = {}
        for e in experts:
            kind = HIT if e in access.hits else ADMITTED if e in access.admitted else MISS
            staged = self.staging.entries.get((pos, e))
            rows = plan.segments(kind, self.I, cpu_ok, staged and (staged.start, staged.stop))
            work[e] = ExpertWork(access.hits.get(e), rows.link, rows.cpu, access.admitted.get(e))
        return work

    def _issue(self, pos: int, queue: list[int], issued: int, work: dict[int, ExpertWork]) -> int:
        """Fetch `queue[issued:]`'s link rows while staging buffers are free; returns the new count."""
        while issued < len(queue) and self.staging.free:
            e = queue[issued]
            start, stop = work[e].link
            src = self.store.rows(pos, e, start, stop)
            self.staging.fetch((pos, e), src, start, self.transfer)
            issued += 1
        return issued

    def _submit_cpu(self, pos, work, x, top_k_index, routing: Routing) -> dict:
        """Start the CPU segments; only the hidden vectors go to the host (a sync on CUDA)."""
        jobs = [e for e, w in work.items() if w.cpu]
        if not jobs:
            return {}
        single = routing.one_token
        x_host = x.detach().to("cpu")
        mask = None if single else top_k_index.t().cpu()
        futures = {}
        for e in jobs:
            start, stop = work[e].cpu
            xs = x_host if single else x_host[torch.where(mask == e)[1]]
            bias = None if self.store.biases is None else self.store.neuron_bias(pos, e)[start:stop]
            futures[e] = self.cpu_worker.submit(xs, self.store.rows(pos, e, start, stop), bias)
        return futures

    def _compute(self, pos, x, routing, top_k_index, top_k_weights, work, cpu_jobs, queue, issued):
        """Every needed expert in eager's order, its segments summed, weighted, accumulated."""
        single = routing.one_token  # skip the gather/scatter, same arithmetic as eager
        out = None if single else torch.zeros_like(x)
        hit_mask = top_k_index.t()  # [K, T], as eager walks it
        top = self.pool.rows[pos]
        for e, w in work.items():
            if single:
                xs = x
            else:
                k_pos, tok = torch.where(hit_mask == e)
                xs = x[tok]
            y = None
            if w.slot is not None:
                y = self.kernel.segment(xs, self._slot_rows(pos, e, w.slot), self._bias(pos, e, 0, top))
            if w.link:
                entry = self.staging.entries[(pos, e)]
                self.transfer.wait(entry.ready)
                part = self.kernel.segment(xs, self.staging.rows(entry, *w.link), self._bias(pos, e, *w.link))
                y = part if y is None else y + part
                if w.admit is not None:
                    self.pool.slot(pos, w.admit).copy_(self.staging.rows(entry, 0, top))
                self.staging.release((pos, e), self.transfer.mark())
                issued = self._issue(pos, queue, issued, work)
            if w.cpu:
                part = cpu_jobs[e].result().to(self.device, non_blocking=True)
                y = part if y is None else y + part.to(y.dtype)
            if self.biases is not None:  # the down bias: once per expert, never per segment
                y = y + self.biases[pos, e, 2 * self.I:].to(y.dtype)
            if single:
                y = (y * top_k_weights[0, routing.rows[0].index(e)]).to(x.dtype)
                out = y if out is None else out + y
            else:
                y = y * top_k_weights[tok, k_pos, None]
                out.index_add_(0, tok, y.to(out.dtype))
            self.link.pump()
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

    def _fetches_possible(self, pos: int) -> bool:
        """False when layer `pos` holds every expert whole: a guess could not save a byte."""
        return self.pool.rows[pos] < self.I or self.pool.slots[pos] < self.spec.num_experts

    # --- reporting ----------------------------------------------------------------------------
    def cache_states(self, pos: int) -> tuple[str | None, ...]:
        """Per expert of layer `pos`: "top" or "full" where the cache holds it, else None."""
        state = "top" if self.is_split(pos) else "full"
        cached = self.directory.cached(pos)
        return tuple(state if e in cached else None for e in range(self.spec.num_experts))

    @contextmanager
    def separate_stats(self):
        """Count into fresh counters (and a fresh live view) while inside; the engine's are left as they were."""
        kept = self.stats, self.activity
        self.stats, self.activity = EngineStats(self.num_layers), CacheActivity(self.num_layers)
        try:
            yield self.stats
        finally:
            self.stats, self.activity = kept
