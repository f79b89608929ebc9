"""CacheDirectory: which expert sits in which slot, per layer. Shared by the engine and the simulator.

Plain Python, no torch: the engine's slot pool moves the bytes this directory decides on.

One forward step at one layer looks up that step's experts together (`access`):
  1. hits are counted against the cache as it was before anything is admitted;
  2. every expert of the step is touched (the policy sees the activation);
  3. each miss, in the given order, is offered a slot: a free slot if there is one (the policy may
     still refuse, as `static` does), else the policy's victim among the cached experts that are
     NOT in this step's set (a step's experts never evict one another) and `policy.admit` decides.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import PlanError
from .policies import Policy


@dataclass
class Access:
    """What one `access` found and changed. `hits`/`admitted` map expert -> slot."""

    hits: dict[int, int] = field(default_factory=dict)
    misses: list[int] = field(default_factory=list)
    admitted: dict[int, int] = field(default_factory=dict)
    evicted: list[int] = field(default_factory=list)


class CacheDirectory:
    def __init__(self, slots_per_layer: Sequence[int], policy: Policy):
        if len(slots_per_layer) != policy.num_layers:
            raise PlanError(f"{len(slots_per_layer)} layers of slots for a policy over {policy.num_layers} layers")
        self.policy = policy
        self._layout(slots_per_layer)

    def _layout(self, slots_per_layer: Sequence[int]) -> None:
        if any(s < 0 for s in slots_per_layer):
            raise PlanError(f"slot counts must be >= 0, got {list(slots_per_layer)}")
        self.slots = [int(s) for s in slots_per_layer]
        self._maps: list[dict[int, int]] = [{} for _ in self.slots]  # expert -> slot

    @property
    def num_layers(self) -> int:
        return len(self.slots)

    def slot_of(self, layer: int, expert: int) -> int | None:
        return self._maps[layer].get(expert)

    def cached(self, layer: int) -> dict[int, int]:
        return dict(self._maps[layer])

    def _free_slot(self, layer: int) -> int | None:
        used = set(self._maps[layer].values())
        return next((s for s in range(self.slots[layer]) if s not in used), None)

    def step(self) -> None:
        self.policy.step()

    def access(self, layer: int, experts: Sequence[int]) -> Access:
        step_set = list(dict.fromkeys(int(e) for e in experts))  # deduplicated, order kept
        cache = self._maps[layer]
        out = Access(hits={e: cache[e] for e in step_set if e in cache},
                     misses=[e for e in step_set if e not in cache])
        for e in step_set:
            self.policy.touch(layer, e)
        in_step = set(step_set)
        others = None  # cached experts outside this step: the only eviction candidates
        for e in out.misses:
            slot = self._free_slot(layer) if len(cache) < self.slots[layer] else None
            if slot is not None:
                if self.policy.admit(layer, e, None):
                    cache[e] = out.admitted[e] = slot
                continue
            if others is None:
                others = [x for x in cache if x not in in_step]
            if not others:
                continue
            victim = self.policy.victim(layer, others)
            if self.policy.admit(layer, e, victim):
                others.remove(victim)
                slot = cache.pop(victim)
                out.evicted.append(victim)
                cache[e] = out.admitted[e] = slot
        return out

    def _ranked(self, layer: int) -> list[int]:
        """Cached experts of `layer`, highest priority first (ties: lowest id first)."""
        p = self.policy
        return sorted(self._maps[layer], key=lambda e: (-p.priority(layer, e), e))

    def resize(self, slots_per_layer: Sequence[int], keep: bool = True) -> dict[int, dict[int, int]]:
        """Re-lay out to new slot counts. With `keep`, each layer keeps its highest-priority experts
        that still fit, compacted to slots 0..n-1 in their old slot order. Returns layer -> {expert: slot}."""
        if len(slots_per_layer) != self.num_layers:
            raise PlanError(f"resize to {len(slots_per_layer)} layers, directory has {self.num_layers}")
        kept = [self._ranked(l)[:max(0, int(n))] if keep else [] for l, n in enumerate(slots_per_layer)]
        old = self._maps
        self._layout(slots_per_layer)
        for l, experts in enumerate(kept):
            for slot, e in enumerate(sorted(experts, key=lambda x: old[l][x])):
                self._maps[l][e] = slot
        return {l: dict(m) for l, m in enumerate(self._maps)}

    def warm_start(self) -> dict[int, list[int]]:
        """Place the policy's warm experts into free slots before any access. Returns layer -> placed experts."""
        placed: dict[int, list[int]] = {}
        for l in range(self.num_layers):
            placed[l] = []
            for e in self.policy.warm(l, self.slots[l]):
                if e in self._maps[l]:
                    continue
                slot = self._free_slot(l)
                if slot is None:
                    break
                self._maps[l][e] = slot
                placed[l].append(e)
        return placed
