"""Device memory accounting: what the engine needs besides the expert cache, and the cache's share.

min_vram = dense part + KV reserve (max_context tokens) + staging (one token's worst case)
           + workspace (activations and logits of a 512-token prefill chunk).
cache    = vram - min_vram, or `cache_gb` when given directly.
"""
from __future__ import annotations

from dataclasses import dataclass

from .spec import DTYPE_BYTES, ModelSpec

PREFILL_CHUNK = 512


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


def fixed_costs(spec: ModelSpec, dtype: str, max_context: int, staging_bytes: int) -> dict:
    item = DTYPE_BYTES[dtype]
    return {
        "dense_bytes": spec.dense_bytes(dtype),
        "kv_reserve_bytes": spec.kv_bytes_per_token(dtype) * max_context,
        "staging_bytes": staging_bytes,
        "workspace_bytes": PREFILL_CHUNK * (spec.vocab_size * 4 + 16 * spec.hidden_size * item),
    }
