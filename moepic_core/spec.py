"""ModelSpec: the sizes of an MoE model that the store, the cache, the solver and the app share.

Bytes of one expert row (one neuron: gate row, up row, down column, each `H` values; see quant.py):
  float: 3*H*itemsize
  int8 : 3*H      + 3*(H/32)*2   (one fp16 scale per block of 32 along H)
  int4 : 3*H/2    + 3*(H/32)*2
"""
from __future__ import annotations

from dataclasses import dataclass, field

QUANT_GROUP = 32
CHUNK = 32  # neurons per expert chunk: the kernels' unit, so splits fall on multiples of it


def chunk_neurons(intermediate_size: int) -> int:
    """Neurons per expert chunk: 32, or the whole expert when I is not a multiple of 32 (then an
    expert cannot be split or quantized)."""
    return CHUNK if intermediate_size % CHUNK == 0 else intermediate_size
QUANTS = ("none", "int8", "int4")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def row_bytes(hidden_size: int, quant: str = "none", dtype: str = "float16", parts: int = 3) -> int:
    """Bytes of one row of `parts` parts of `hidden_size` values (a neuron row `[3, H]` by default)."""
    if quant == "none":
        return parts * hidden_size * DTYPE_BYTES[dtype]
    if hidden_size % QUANT_GROUP:
        raise ValueError(f"quantization needs hidden_size divisible by {QUANT_GROUP}, got {hidden_size}")
    scales = parts * (hidden_size // QUANT_GROUP) * 2
    if quant == "int8":
        return parts * hidden_size + scales
    if quant == "int4":
        return parts * hidden_size // 2 + scales
    raise ValueError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of an MoE model. `moe_layers` are decoder-layer indices that have routed experts."""

    name: str
    family: str
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int  # per routed expert
    dense_params: int  # everything that is not a routed expert (embeddings, attention, shared experts, head)
    num_kv_heads: int = 8
    head_dim: int = 128
    vocab_size: int = 32000
    shared_intermediate_size: int = 0
    kv_layers: int | None = None  # layers that keep a KV cache (hybrid linear-attention models have fewer)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.top_k > self.num_experts or self.top_k < 1:
            raise ValueError(f"top_k {self.top_k} must be in 1..num_experts ({self.num_experts})")
        if not self.moe_layers:
            raise ValueError("a model without MoE layers has nothing to offload")

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def total_params(self) -> int:
        return self.dense_params + self.num_moe_layers * self.num_experts * self.expert_params

    @property
    def active_params(self) -> int:
        """Parameters one token goes through: the dense part and top_k experts per MoE layer."""
        return self.dense_params + self.num_moe_layers * self.top_k * self.expert_params

    def row_bytes(self, quant: str = "none", dtype: str = "float16") -> int:
        return row_bytes(self.hidden_size, quant, dtype)

    def expert_bytes(self, quant: str = "none", dtype: str = "float16") -> int:
        return self.intermediate_size * self.row_bytes(quant, dtype)

    def store_bytes(self, quant: str = "none", dtype: str = "float16") -> int:
        """Host RAM for all routed experts."""
        return self.num_moe_layers * self.num_experts * self.expert_bytes(quant, dtype)

    def store_file(self, quant: str, dtype: str, fingerprint: str = "*") -> str:
        """The packed store's file name in the cache folder; with the default fingerprint, a glob
        pattern for any version of it."""
        return f"{self.name}-{quant}-{dtype}-{fingerprint}.experts"

    def dense_bytes(self, dtype: str = "float16") -> int:
        return self.dense_params * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str = "float16") -> int:
        return 2 * (self.kv_layers or self.num_layers) * self.num_kv_heads * self.head_dim * DTYPE_BYTES[dtype]
