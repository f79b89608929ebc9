"""Routing traces: per decoded token and MoE layer, the experts the router chose and the predictor's guess.

File format (`.npz`, written atomically):
  experts      int16 [T, L, k]   experts chosen at token t, MoE layer l (in `ModelSpec.moe_layers` order)
  predicted    int16 [T, L, k']  optional: the guess for layer l made while layer l-1 ran; NO_GUESS (-1)
                                 pads a guess shorter than k' and fills a layer that had none
  num_experts  int64 scalar      optional: default max id + 1
  top_k        int64 scalar      optional: default k from the shape
  model        str scalar        optional
A file holding only `experts` loads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import TraceError
from ..fsutil import atomic_path


NO_GUESS = -1  # in `predicted`: no guessed expert here


@dataclass
class RoutingTrace:
    experts: np.ndarray                      # int16 [T, L, k]
    predicted: np.ndarray | None = None      # int16 [T, L, k'] or None
    num_experts: int = 0                     # 0: max id + 1
    top_k: int = 0                           # 0: k from the shape
    model: str = ""

    def __post_init__(self):
        self.experts = np.asarray(self.experts)
        if self.experts.ndim != 3 or self.experts.shape[2] < 1:
            raise TraceError(f"trace 'experts' must be [tokens, layers, k], got shape {self.experts.shape}")
        if self.experts.size and self.experts.min() < 0:
            raise TraceError("trace 'experts' holds negative expert ids")
        self.experts = self.experts.astype(np.int16)
        if not self.num_experts:
            self.num_experts = int(self.experts.max()) + 1 if self.experts.size else 1
        if not self.top_k:
            self.top_k = int(self.experts.shape[2])
        if self.experts.size and self.experts.max() >= self.num_experts:
            raise TraceError(f"trace has expert id {int(self.experts.max())} >= num_experts {self.num_experts}")
        if self.predicted is not None:
            self.predicted = np.asarray(self.predicted).astype(np.int16)
            if self.predicted.ndim != 3 or self.predicted.shape[:2] != self.experts.shape[:2]:
                raise TraceError(f"trace 'predicted' shape {self.predicted.shape} does not match experts "
                                 f"{self.experts.shape[:2]} in tokens and layers")

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        arrays = {"experts": self.experts, "num_experts": np.int64(self.num_experts),
                  "top_k": np.int64(self.top_k), "model": np.array(self.model)}
        if self.predicted is not None:
            arrays["predicted"] = self.predicted
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RoutingTrace":
        if not os.path.isfile(path):
            raise TraceError(f"routing trace {str(path)!r} not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "experts" not in z.files:
                    raise TraceError(f"routing trace {str(path)!r} has no 'experts' array (found {z.files})")
                data = {name: z[name] for name in z.files}
        except TraceError:
            raise
        except Exception as exc:
            raise TraceError(f"routing trace {str(path)!r} is not a readable .npz file: {exc}") from exc
        return cls(experts=data["experts"], predicted=data.get("predicted"),
                   num_experts=int(data["num_experts"]) if "num_experts" in data else 0,
                   top_k=int(data["top_k"]) if "top_k" in data else 0,
                   model=str(data["model"]) if "model" in data else "")

    def tokens(self, tokens) -> "RoutingTrace":
        """A trace of only some decode steps (a slice or index array)."""
        pred = None if self.predicted is None else self.predicted[tokens]
        return RoutingTrace(self.experts[tokens], pred, self.num_experts, self.top_k, self.model)

    def layers(self, layers) -> "RoutingTrace":
        """A trace of only some layers (e.g. to match a model with fewer MoE layers)."""
        pred = None if self.predicted is None else self.predicted[:, layers]
        return RoutingTrace(self.experts[:, layers], pred, self.num_experts, self.top_k, self.model)

    # --- statistics (the ones issue 3 calibrates the synthetic generator against) ---

    def counts(self) -> np.ndarray:
        """Activations per layer and expert: int64 [L, E]."""
        out = np.zeros((self.num_layers, self.num_experts), np.int64)
        for l in range(self.num_layers):
            out[l] = np.bincount(self.experts[:, l].ravel(), minlength=self.num_experts)
        return out

    def top_share(self, fraction: float = 0.25) -> float:
        """Share of activations taken by each layer's top `fraction` of experts, averaged over layers."""
        c = np.sort(self.counts(), axis=1)[:, ::-1]
        n = max(1, round(fraction * self.num_experts))
        return float((c[:, :n].sum(1) / np.maximum(1, c.sum(1))).mean())

    def repeat_rate(self) -> float:
        """How often a token's expert set at a layer equals the previous token's set there."""
        if self.num_tokens < 2:
            return 0.0
        s = np.sort(self.experts, axis=2)
        return float((s[1:] == s[:-1]).all(axis=2).mean())

    def prediction_recall(self) -> np.ndarray | None:
        """Per layer, the fraction of chosen experts that the recorded guess contained, over the steps
        where a guess was made: float [L], NaN for a layer never guessed (the first MoE layer)."""
        if self.predicted is None:
            return None
        hit = (self.experts[:, :, :, None] == self.predicted[:, :, None, :]).any(axis=3).sum(axis=2)
        guessed = (self.predicted != NO_GUESS).any(axis=2)            # [T, L]
        steps = guessed.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(steps > 0, (hit * guessed).sum(axis=0) / (steps * self.top_k), np.nan)

    def next_layer_coverage(self, guesses: int) -> float:
        """Coverage of next-layer experts by a guess from the current layer's set alone: for each layer
        pair, the `guesses` experts most often seen at l+1 after the current set's members (co-occurrence
        counts from this trace). The issue-3 statistic (Mixtral: ~38% with 2 guesses, ~62% with 4)."""
        T, L, k = self.experts.shape
        if L < 2:
            return 0.0
        E = self.num_experts
        covered = total = 0
        for l in range(L - 1):
            co = np.zeros((E, E), np.int64)
            a, b = self.experts[:, l], self.experts[:, l + 1]
            for i in range(k):
                for j in range(k):
                    np.add.at(co, (a[:, i], b[:, j]), 1)
            score = co[a].sum(axis=1)                            # [T, E]
            guess = np.argsort(-score, axis=1, kind="stable")[:, :guesses]
            covered += (b[:, :, None] == guess[:, None, :]).any(axis=2).sum()
            total += b.size
        return float(covered / max(1, total))

    def stats(self) -> dict:
        return {"tokens": self.num_tokens, "layers": self.num_layers, "num_experts": self.num_experts,
                "top_k": self.top_k, "top25_share": self.top_share(0.25), "repeat_rate": self.repeat_rate()}


class TraceRecorder:
    """Builds a RoutingTrace from the runtime's LayerSteps: one row per one-token (decode) step that
    ran through every MoE layer, the router's choice in its order and the guess made for each layer."""

    def __init__(self, num_layers: int, top_k: int, guess_width: int, num_experts: int, model: str = ""):
        self.num_layers, self.top_k, self.guess_width = num_layers, top_k, guess_width
        self.num_experts, self.model = num_experts, model
        self.steps: list[list] = []  # per recorded token, its LayerSteps in layer order

    def __len__(self) -> int:
        """Tokens recorded so far."""
        return len(self.steps)

    def add(self, step) -> None:
        if not step.routing.one_token:
            return
        if step.pos == 0:
            self.steps.append([])
        if self.steps and len(self.steps[-1]) == step.pos:
            self.steps[-1].append(step)

    def trace(self) -> RoutingTrace:
        tokens = [token for token in self.steps if len(token) == self.num_layers]
        experts = np.array([[step.routing.rows[0] for step in token] for token in tokens], dtype=np.int16)
        predicted = np.full((len(tokens), self.num_layers, self.guess_width), NO_GUESS, dtype=np.int16)
        for t, token in enumerate(tokens):
            for step in token:
                guess = step.guess or ()
                predicted[t, step.pos, :len(guess)] = guess
        return RoutingTrace(experts.reshape(len(tokens), self.num_layers, self.top_k), predicted,
                            self.num_experts, self.top_k, self.model)
