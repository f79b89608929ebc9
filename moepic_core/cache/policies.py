"""Cache policies: per layer, which cached expert to evict and whether a missed expert is admitted.

Plain Python over (layer, expert) ids, no torch. The clock counts decode steps (one per token):
`touch` records an activation at the current step, `step` advances the clock. A `CacheDirectory`
calls them; the policy never sees slots or bytes.

  lcp    P = mu * rho ** (nu / tau): mu = activations so far, nu = steps since the last one
         (rho = 0.25, tau = 128). Lowest P is evicted; a miss is admitted iff P(new) >= P(victim).
  lru    evict the least recently touched; always admit.
  lfu    evict the lowest count (ties: least recent); always admit.
  static top experts of a `profile` (per-layer per-expert counts) placed by `warm`; never admits.

Every victim tie ends at the lowest expert id, so replays are deterministic.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

NEVER = -1  # `last` of an expert never touched


class Policy:
    """Base policy: counts and last-touch steps per (layer, expert); subclasses set the priority."""

    name = "base"

    def __init__(self, num_layers: int, num_experts: int, **params):
        if num_layers < 1 or num_experts < 1:
            raise ValueError(f"a policy needs num_layers >= 1 and num_experts >= 1, got {num_layers}, {num_experts}")
        if params:
            raise TypeError(f"policy {self.name!r} takes no parameters {sorted(params)}")
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.clock = 0
        self.count = [[0] * num_experts for _ in range(num_layers)]
        self.last = [[NEVER] * num_experts for _ in range(num_layers)]

    def step(self) -> None:
        self.clock += 1

    def touch(self, layer: int, expert: int) -> None:
        self.count[layer][expert] += 1
        self.last[layer][expert] = self.clock

    def priority(self, layer: int, expert: int) -> float:
        raise NotImplementedError

    def _key(self, layer: int, expert: int) -> tuple:
        """Sort key, lowest first evicted; the expert id breaks ties."""
        return (self.priority(layer, expert), expert)

    def _keys(self, layer: int, experts: np.ndarray) -> tuple:
        """`_key` for many experts at once, as np.lexsort keys (most significant last)."""
        return (np.array([self.priority(layer, int(e)) for e in experts]),)

    def victim(self, layer: int, candidates: Iterable[int]) -> int:
        candidates = sorted(candidates)
        if not candidates:
            raise ValueError("victim() needs at least one candidate")
        if len(candidates) <= 16:
            return min(candidates, key=lambda e: self._key(layer, e))
        experts = np.array(candidates)
        return int(experts[np.lexsort(self._keys(layer, experts))[0]])  # stable: ties keep the lowest id

    def admit(self, layer: int, expert: int, victim: int | None) -> bool:
        return True

    def warm(self, layer: int, slots: int) -> list[int]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self.num_layers}, experts={self.num_experts})"


class LCPPolicy(Policy):
    """Least critical priority: P = mu * rho ** (nu / tau)."""

    name = "lcp"

    def __init__(self, num_layers: int, num_experts: int, rho: float = 0.25, tau: float = 128.0):
        super().__init__(num_layers, num_experts)
        if not 0.0 < rho <= 1.0 or tau <= 0:
            raise ValueError(f"lcp needs 0 < rho <= 1 and tau > 0, got rho={rho}, tau={tau}")
        self.rho = rho
        self.tau = tau

    def priority(self, layer: int, expert: int) -> float:
        mu = self.count[layer][expert]
        if mu == 0:
            return 0.0
        nu = self.clock - self.last[layer][expert]
        return mu * self.rho ** (nu / self.tau)

    def _keys(self, layer: int, experts: np.ndarray) -> tuple:
        mu = np.array(self.count[layer], float)[experts]
        nu = self.clock - np.array(self.last[layer], float)[experts]
        return (np.where(mu > 0, mu * self.rho ** (nu / self.tau), 0.0),)

    def admit(self, layer: int, expert: int, victim: int | None) -> bool:
        return victim is None or self.priority(layer, expert) >= self.priority(layer, victim)


class LRUPolicy(Policy):
    name = "lru"

    def priority(self, layer: int, expert: int) -> float:
        return float(self.last[layer][expert])

    def _keys(self, layer: int, experts: np.ndarray) -> tuple:
        return (np.array(self.last[layer])[experts],)


class LFUPolicy(Policy):
    name = "lfu"

    def priority(self, layer: int, expert: int) -> float:
        return float(self.count[layer][expert])

    def _key(self, layer: int, expert: int) -> tuple:
        return (self.count[layer][expert], self.last[layer][expert], expert)

    def _keys(self, layer: int, experts: np.ndarray) -> tuple:
        return (np.array(self.last[layer])[experts], np.array(self.count[layer])[experts])


class StaticPolicy(Policy):
    """Pinned from a profile: `warm` places the most-used experts; nothing is admitted or evicted later."""

    name = "static"

    def __init__(self, num_layers: int, num_experts: int, profile: list[list[int]] | None = None):
        super().__init__(num_layers, num_experts)
        if profile is None:
            profile = [[0] * num_experts for _ in range(num_layers)]
        if len(profile) != num_layers or any(len(row) != num_experts for row in profile):
            raise ValueError(f"static profile must be {num_layers} layers x {num_experts} experts of counts")
        self.profile = [[float(c) for c in row] for row in profile]

    def priority(self, layer: int, expert: int) -> float:
        return self.profile[layer][expert]

    def admit(self, layer: int, expert: int, victim: int | None) -> bool:
        return False

    def warm(self, layer: int, slots: int) -> list[int]:
        ranked = sorted(range(self.num_experts), key=lambda e: (-self.profile[layer][e], e))
        return ranked[:max(0, slots)]


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LCPPolicy, LRUPolicy, LFUPolicy, StaticPolicy)}


def make_policy(name: str, num_layers: int, num_experts: int, **params) -> Policy:
    """Build the policy registered under `name`; unknown names get an error listing the valid ones."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown cache policy {name!r}; choose one of {', '.join(sorted(POLICIES))}")
    return cls(num_layers, num_experts, **params)
