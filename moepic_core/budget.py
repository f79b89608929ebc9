"""Device memory accounting: what the engine needs besides the expert cache, and the cache's share.
One function, `plan_budget`, serves the engine, `solve`, `simulate` and (through the engine) the app.

min_vram = dense part + KV reserve (max_context tokens) + staging (one token's worst case)
           + workspace (activations and logits of a 512-token prefill chunk).
cache    = vram - min_vram, or `cache_bytes` when given directly; on the CPU without either, a
           simulated VRAM budget of min_vram + SIMULATED_CACHE_SHARE of the expert bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import BudgetError
from .spec import DTYPE_BYTES, ModelSpec
from .units import GB

PREFILL_CHUNK = 512
CONTEXT_TOKENS = 4096   # the engine's default max_context: the KV reserve is sized for this many tokens
FREE_VRAM_SHARE = 0.9   # without a budget, CUDA takes this share of the free VRAM
SIMULATED_CACHE_SHARE = 0.35  # without a budget, a simulated (CPU) cache holds this share of the expert bytes


@dataclass(frozen=True)
class Budget:
    cache_bytes: int
    dense_bytes: int
    kv_reserve_bytes: int
    staging_bytes: int
    workspace_bytes: int
    vram_bytes: int | None
    simulated: bool  # CPU mode: the "device" is host RAM and the budget only shapes the cache
    in_place: bool = False  # CPU: every expert computed where it lies in the store; no cache, no copies

    @property
    def min_vram_bytes(self) -> int:
        return self.dense_bytes + self.kv_reserve_bytes + self.staging_bytes + self.workspace_bytes

    def to_dict(self) -> dict:
        return {"vram_bytes": self.vram_bytes, "cache_bytes": self.cache_bytes, "dense_bytes": self.dense_bytes,
                "kv_reserve_bytes": self.kv_reserve_bytes, "staging_bytes": self.staging_bytes,
                "workspace_bytes": self.workspace_bytes, "min_vram_bytes": self.min_vram_bytes,
                "simulated": self.simulated, "in_place": self.in_place}

    def note(self) -> str:
        """One line: where the cache share comes from."""
        if self.vram_bytes is None:
            return "cache budget given" if not self.simulated else "simulated cache"
        return (f"VRAM {self.vram_bytes / GB:.2f} GB - dense {self.dense_bytes / GB:.2f} - KV/staging/workspace "
                f"{(self.min_vram_bytes - self.dense_bytes) / GB:.2f}")


def staging_experts(top_k: int, prefetch_extra: int = 0) -> int:
    """Whole experts of staging: one token's worst case, this layer's k experts plus the next
    layer's guesses in flight."""
    return 2 * (top_k + prefetch_extra)


def fixed_costs(spec: ModelSpec, dtype: str, max_context: int, staging_bytes: int) -> dict:
    item = DTYPE_BYTES[dtype]
    return {
        "dense_bytes": spec.dense_bytes(dtype),
        "kv_reserve_bytes": spec.kv_bytes_per_token(dtype) * max_context,
        "staging_bytes": staging_bytes,
        "workspace_bytes": PREFILL_CHUNK * (spec.vocab_size * 4 + 16 * spec.hidden_size * item),
    }


def plan_budget(spec: ModelSpec, *, quant: str = "none", dtype: str = "float16", vram_bytes: int | None = None,
                cache_bytes: int | None = None, max_context: int = CONTEXT_TOKENS, prefetch_extra: int = 0,
                simulated: bool = False, free_bytes: int | None = None, in_place: bool = False,
                extra_workspace: int = 0) -> Budget:
    """The budget for `spec`: in place (CPU), every expert where it lies; else the cache is
    `cache_bytes` if given, else what `vram_bytes` leaves after the fixed costs, else (simulated CPU
    mode) SIMULATED_CACHE_SHARE of the expert bytes (in a VRAM budget of the fixed costs plus that), else
    a share of `free_bytes` of VRAM. `extra_workspace`: bytes the kernels need besides the prefill workspace."""
    staging = 0 if in_place else staging_experts(spec.top_k, prefetch_extra) * spec.expert_bytes(quant, dtype)
    costs = fixed_costs(spec, dtype, min(max_context, 1 << 20), staging)
    costs["workspace_bytes"] += extra_workspace
    min_vram = sum(costs.values())
    if in_place:
        return Budget(cache_bytes=spec.store_bytes(quant, dtype), vram_bytes=None, simulated=False, in_place=True,
                      **costs)
    if cache_bytes is not None:
        cache = int(cache_bytes)
    elif vram_bytes is not None:
        if vram_bytes < min_vram:
            gb = GB
            raise BudgetError(
                f"VRAM budget {vram_bytes / gb:.3f} GB is below the minimum {min_vram / gb:.3f} GB for "
                f"{spec.name} ({dtype}, quant {quant}): dense part {costs['dense_bytes'] / gb:.3f} GB, "
                f"KV reserve {costs['kv_reserve_bytes'] / gb:.3f} GB for {max_context} tokens, staging "
                f"{staging / gb:.3f} GB, workspace {costs['workspace_bytes'] / gb:.3f} GB", min_vram)
        cache = int(vram_bytes) - min_vram
    elif simulated:
        cache = int(SIMULATED_CACHE_SHARE * spec.store_bytes(quant, dtype))
        vram_bytes = min_vram + cache
    elif free_bytes is not None:
        cache = max(0, int(free_bytes * FREE_VRAM_SHARE) - min_vram)
    else:
        raise ValueError("plan_budget needs cache_bytes, vram_bytes, simulated or free_bytes")
    return Budget(cache_bytes=cache, vram_bytes=None if vram_bytes is None else int(vram_bytes),
                  simulated=simulated, **costs)
