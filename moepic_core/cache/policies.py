"""Cache policies: per layer, which cached expert to evict and whether a missed expert is admitted.

Bookkeeping over (layer, expert) ids, no torch. The clock counts decode steps (one per token):
`touch` records an activation at the current step, `step` advances the clock. Every policy keeps the
same state, `count[L, E]` (activations so far) and `last[L, E]` (step of the last one, -1 never), and
differs only in its score (lowest evicted) and its admission rule, both written once over arrays so
the directory (one victim at a time) and the replay (all layers and cache sizes at once) share them.

  lcp           the paper's least critical priority: P = mu * rho ** (nu / tau), mu = activations so
                far, nu = steps since the last one (rho = 0.25, tau = 128). Lowest P is evicted; a
                miss is always admitted.
  lcp-filtered  lcp with an admission filter: a miss is admitted iff P(new) >= P(victim).
  lru           evict the least recently touched; always admit.
  lfu           evict the lowest count (ties: least recent); always admit.
  reuse         learned reuse probability (a recency curve measured online times the expert's own
                frequency), with bypass: a miss is admitted only if it beats the victim.
  static        top experts of a `profile` (per-layer per-expert counts) placed by `warm`; never admits.
  per-layer     one of the above per layer (`layers=[name, ...]`): what `--policy auto` may pick.
"auto" (`AUTO`) is no policy: the solver replays the calibration trace with each and picks one.

Every victim tie ends at the lowest expert id, so replays are deterministic.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import PlanError
from ..options import bad

NEVER = -1  # `last` of an expert never touched


class Policy:
    """Base policy: counts and last-touch steps per (layer, expert); subclasses set the score."""

    name = "base"

    def __init__(self, num_layers: int, num_experts: int, **params):
        if num_layers < 1 or num_experts < 1:
            raise PlanError(f"a policy needs num_layers >= 1 and num_experts >= 1, got {num_layers}, {num_experts}")
        if params:
            raise TypeError(f"policy {self.name!r} takes no parameters {sorted(params)}")
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.clock = 0
        self.count = np.zeros((num_layers, num_experts), np.int64)
        self.last = np.full((num_layers, num_experts), NEVER, np.int64)

    def step(self) -> None:
        self._observe_step()
        self.clock += 1

    def touch(self, layer: int, expert: int) -> None:
        self.touch_many(np.array([layer]), np.array([expert]))

    def touch_many(self, layers: np.ndarray, experts: np.ndarray) -> None:
        """Activations at the current step of distinct (layer, expert) pairs (int arrays)."""
        self._observe(layers, experts)
        self.count[layers, experts] += 1
        self.last[layers, experts] = self.clock

    def _observe(self, layers: np.ndarray, experts: np.ndarray) -> None:
        """Hook for extra state: called with a step's activations before count and last change."""

    def _observe_step(self) -> None:
        """Hook for extra state: called at the end of a step, before the clock advances."""

    def scores(self, layers, experts) -> np.ndarray:
        """Eviction score of (layers, experts) index arrays (broadcast); lowest is evicted first."""
        raise NotImplementedError

    def priority(self, layer: int, expert: int) -> float:
        return float(self.scores(np.asarray(layer), np.asarray(expert)))

    def victim(self, layer: int, candidates: Iterable[int]) -> int:
        experts = np.array(sorted(candidates), np.int64)
        if not len(experts):
            raise ValueError("victim() needs at least one candidate")
        return int(experts[np.argmin(self.scores(np.asarray(layer), experts))])  # first minimum: lowest id

    def admits(self, layers, new_scores, victim_scores) -> np.ndarray:
        """Whether a miss with score `new_scores` replaces a victim with `victim_scores` (arrays)."""
        return np.ones(np.broadcast(layers, new_scores, victim_scores).shape, bool)

    def admits_free(self, layers) -> np.ndarray:
        """Whether a miss takes a free slot, per layer in `layers`."""
        return np.ones(np.shape(layers), bool)

    def admit(self, layer: int, expert: int, victim: int | None) -> bool:
        if victim is None:
            return bool(self.admits_free(np.asarray(layer)))
        new, old = self.scores(np.asarray(layer), np.array([expert, victim]))
        return bool(self.admits(np.asarray(layer), new, old))

    def warm(self, layer: int, slots: int) -> list[int]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self.num_layers}, experts={self.num_experts})"


class LCPPolicy(Policy):
    """Least critical priority as the paper defines it: P = mu * rho ** (nu / tau), always admit."""

    name = "lcp"

    def __init__(self, num_layers: int, num_experts: int, rho: float = 0.25, tau: float = 128.0):
        super().__init__(num_layers, num_experts)
        if not 0.0 < rho <= 1.0 or tau <= 0:
            raise PlanError(f"{self.name} needs 0 < rho <= 1 and tau > 0, got rho={rho}, tau={tau}")
        self.rho = rho
        self.tau = tau

    def scores(self, layers, experts) -> np.ndarray:
        mu = self.count[layers, experts].astype(float)
        nu = self.clock - self.last[layers, experts]
        return np.where(mu > 0, mu * self.rho ** (nu / self.tau), 0.0)


class FilteredLCPPolicy(LCPPolicy):
    """lcp plus an admission filter: a newcomer is cached only if its P >= the victim's."""

    name = "lcp-filtered"

    def admits(self, layers, new_scores, victim_scores) -> np.ndarray:
        return np.asarray(new_scores) >= np.asarray(victim_scores)


class LRUPolicy(Policy):
    name = "lru"

    def scores(self, layers, experts) -> np.ndarray:
        return self.last[layers, experts].astype(float)


class LFUPolicy(Policy):
    name = "lfu"

    def scores(self, layers, experts) -> np.ndarray:
        # (count, last) in one number: last + 1 <= clock + 1 < clock + 2
        return self.count[layers, experts] * float(self.clock + 2) + (self.last[layers, experts] + 1)


class ReusePolicy(Policy):
    """Reuse probability, learned online per layer: an expert's chance to be used at the next step is
    estimated as R_l[gap] * lift, with R_l[gap] the measured rate at which experts whose last use is
    `gap` steps back are used (gaps 1..16, 17+, never; a weak prior at the layer's mean rate) and lift
    = the expert's own rate over the layer's mean (its count so far). Lowest is evicted, and a miss is
    admitted only if its chance beats the victim's (bypass, as the offline optimum does). It adapts
    between recency (when R falls fast with the gap) and frequency (when it does not)."""

    name = "reuse"
    GAPS = 16  # gap buckets 1..GAPS, then GAPS+1.. together, then never used

    def __init__(self, num_layers: int, num_experts: int, prior: float = 4.0):
        super().__init__(num_layers, num_experts)
        if prior <= 0:
            raise PlanError(f"reuse needs prior > 0, got {prior}")
        self.prior = prior
        self.exposed = np.zeros((num_layers, self.GAPS + 2))  # expert-steps seen at each gap bucket
        self.used = np.zeros((num_layers, self.GAPS + 2))     # ... of which the expert was used

    def _bucket(self, last: np.ndarray, ahead: int = 0) -> np.ndarray:
        return np.where(last < 0, self.GAPS + 1, np.minimum(self.clock + ahead - last, self.GAPS + 1) - 1)

    def _observe(self, layers, experts) -> None:
        b = self._bucket(self.last[layers, experts])
        np.add.at(self.used, (layers, b), 1)
        np.add.at(self.exposed, (layers, b), 1)

    def _observe_step(self) -> None:
        idle = self.last != self.clock  # the step's users were counted by _observe
        rows = np.broadcast_to(np.arange(self.num_layers)[:, None], idle.shape)
        np.add.at(self.exposed, (rows[idle], self._bucket(self.last)[idle]), 1)

    def scores(self, layers, experts) -> np.ndarray:
        mean = (self.used.sum(1) + 1.0) / (self.exposed.sum(1) + self.num_experts)      # [L] use rate per step
        rate = (self.used + self.prior * mean[:, None]) / (self.exposed + self.prior)   # [L, buckets]
        lift = (self.count[layers, experts] + 1.0) / (mean[layers] * self.clock + 1.0)
        layers = np.broadcast_to(layers, np.broadcast(layers, experts).shape)
        return rate[layers, self._bucket(self.last[layers, experts], ahead=1)] * lift

    def admits(self, layers, new_scores, victim_scores) -> np.ndarray:
        return np.asarray(new_scores) >= np.asarray(victim_scores)


class StaticPolicy(Policy):
    """Pinned from a profile: `warm` places the most-used experts; nothing is admitted or evicted later."""

    name = "static"

    def __init__(self, num_layers: int, num_experts: int, profile: list[list[int]] | None = None):
        super().__init__(num_layers, num_experts)
        if profile is None:
            profile = [[0] * num_experts for _ in range(num_layers)]
        if len(profile) != num_layers or any(len(row) != num_experts for row in profile):
            raise PlanError(f"static profile must be {num_layers} layers x {num_experts} experts of counts")
        self.profile = np.array(profile, float)

    def scores(self, layers, experts) -> np.ndarray:
        return self.profile[layers, experts]

    def admits(self, layers, new_scores, victim_scores) -> np.ndarray:
        return np.zeros(np.broadcast(layers, new_scores, victim_scores).shape, bool)

    def admits_free(self, layers) -> np.ndarray:
        return np.zeros(np.shape(layers), bool)

    def warm(self, layer: int, slots: int) -> list[int]:
        ranked = sorted(range(self.num_experts), key=lambda e: (-self.profile[layer, e], e))
        return ranked[:max(0, slots)]


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LCPPolicy, FilteredLCPPolicy, LRUPolicy, LFUPolicy,
                                                         ReusePolicy, StaticPolicy)}
PARAMS = {"lcp": ("rho", "tau"), "lcp-filtered": ("rho", "tau"), "reuse": ("prior",), "static": ("profile",)}


class PerLayerPolicy(Policy):
    """A registered policy per layer (`layers[l]` names layer l's), over one shared state: the scores
    of layer l are its policy's. Parameters go to the policies that take them (`PARAMS`)."""

    name = "per-layer"

    def __init__(self, num_layers: int, num_experts: int, layers: list[str] | None = None, **params):
        super().__init__(num_layers, num_experts)
        layers = list(layers or [])
        if len(layers) != num_layers:
            raise PlanError(f"per-layer policy needs {num_layers} policy names, got {len(layers)}")
        unknown = set(params) - {k for names in PARAMS.values() for k in names}
        if unknown:
            raise TypeError(f"policy {self.name!r} takes no parameters {sorted(unknown)}")
        self.names = layers
        self.rules = {name: _make_rule(name, num_layers, num_experts, params) for name in dict.fromkeys(layers)}
        for rule in self.rules.values():  # one state for all: a rule reads this policy's count, last, clock
            rule.count, rule.last = self.count, self.last
        self._of = np.array([list(self.rules).index(n) for n in layers])

    def _observe(self, layers, experts) -> None:
        for rule in self.rules.values():
            rule._observe(layers, experts)

    def _observe_step(self) -> None:
        for rule in self.rules.values():
            rule._observe_step()

    def step(self) -> None:
        super().step()
        for rule in self.rules.values():
            rule.clock = self.clock

    def _pick(self, layers, method, *args) -> np.ndarray:
        results = [getattr(rule, method)(layers, *args) for rule in self.rules.values()]
        which = self._of[np.asarray(layers)]
        return np.choose(np.broadcast_to(which, np.broadcast(which, *results).shape), results)

    def scores(self, layers, experts) -> np.ndarray:
        return self._pick(layers, "scores", experts)

    def admits(self, layers, new_scores, victim_scores) -> np.ndarray:
        return self._pick(layers, "admits", new_scores, victim_scores)

    def admits_free(self, layers) -> np.ndarray:
        return self._pick(layers, "admits_free")

    def warm(self, layer: int, slots: int) -> list[int]:
        return self.rules[self.names[layer]].warm(layer, slots)


def _make_rule(name: str, num_layers: int, num_experts: int, params: dict) -> Policy:
    if name == PerLayerPolicy.name:
        raise PlanError("a per-layer policy cannot nest another")
    return make_policy(name, num_layers, num_experts, **{k: v for k, v in params.items() if k in PARAMS.get(name, ())})


POLICIES[PerLayerPolicy.name] = PerLayerPolicy


AUTO = "auto"  # not a policy: the solver picks one (or one per layer) by replaying the calibration trace
POLICY_CHOICES = (AUTO, *(name for name in POLICIES if name != PerLayerPolicy.name))


def make_policy(name: str, num_layers: int, num_experts: int, **params) -> Policy:
    """Build the policy registered under `name`; unknown names get an error listing the valid ones."""
    cls = POLICIES.get(name)
    if cls is None:
        raise bad("policy", name, sorted(POLICIES))
    return cls(num_layers, num_experts, **params)
