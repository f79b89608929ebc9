"""GPT-OSS: biased, clamped SwiGLU experts with gate and up interleaved, stored fused (MXFP4 on the hub).

Expert math (transformers' GptOssExperts), per token x [H] and neuron i:
  g_i = min(x . W_gate[i] + b_gate[i], limit)
  u_i = clamp(x . W_up[i] + b_up[i], -limit, limit)
  h_i = (u_i + 1) * g_i * sigmoid(alpha * g_i)
  y   = sum_i h_i * W_down[:, i] + b_down
so b_gate/b_up travel with their neuron's rows and b_down is added once per expert (not per segment).

Checkpoint layouts of decoder layer l, stem "model.layers.<l>.mlp.experts", E experts:
  float : gate_up_proj [E, H, 2I] (column 2i gate of neuron i, 2i+1 its up), down_proj [E, I, H]
  MXFP4 : gate_up_proj_blocks [E, 2I, H/32, 16] u8 + gate_up_proj_scales [E, 2I, H/32] u8 (row 2i gate,
          2i+1 up), down_proj_blocks [E, H, I/32, 16] + down_proj_scales [E, H, I/32]
  both  : gate_up_proj_bias [E, 2I] (interleaved), down_proj_bias [E, H]
MXFP4 (OCP microscaling): each byte holds two E2M1 values, low nibble first; a group of 32 values
shares one E8M0 scale byte s, the value being e2m1 * 2^(s - 127). Decoded to float32 at pack time.
"""
from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .base import ExpertWeights, FamilyAdapter

# E2M1 code -> value: sign bit 3, exponent bits 2-1, mantissa bit 0
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
MXFP4_SCALE_BIAS = 127


def decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks uint8 [R, G, 16], scales uint8 [R, G] -> float32 [R, G * 32]."""
    rows, groups, _ = blocks.shape
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).view(rows, groups, 32)
    values = E2M1_VALUES[codes.long()]
    exponent = scales.to(torch.int32) - MXFP4_SCALE_BIAS
    return torch.ldexp(values, exponent.unsqueeze(-1).to(torch.float32)).view(rows, groups * 32)


class GptOssAdapter(FamilyAdapter):
    model_type = "gpt_oss"
    router_attr = "router"
    expert_math = "gpt_oss_swiglu"
    expert_biases = True
    notes = "softmax over the top-k logits (+ router bias); clamped SwiGLU experts with biases; MXFP4 experts on the hub"

    @property
    def swiglu(self) -> dict:
        """The expert activation's constants: alpha (sigmoid slope) and limit (clamp)."""
        return {"alpha": float(self.text_config.swiglu_alpha), "limit": float(self.text_config.swiglu_limit)}

    def activation(self, model):
        from ..runtime.kernels import Activation

        return Activation("clamped_swiglu", **self.swiglu)

    def locate(self, keys) -> dict:
        keys = set(keys)
        self._sources = {layer: f"model.layers.{layer}.mlp.experts" for layer in self.moe_layers()}
        for layer, stem in self._sources.items():
            if f"{stem}.gate_up_proj_blocks" not in keys and f"{stem}.gate_up_proj" not in keys:
                raise ModelLoadError(f"layer {layer}: no GPT-OSS experts ({stem}.gate_up_proj or "
                                     "gate_up_proj_blocks) in the checkpoint")
        return self._sources

    def expert_weights(self, reader, layer: int, expert: int) -> ExpertWeights:
        stem = (self._sources or self.locate(reader.keys()))[layer]

        def row(name: str) -> torch.Tensor:
            return reader.row(f"{stem}.{name}", expert)

        if f"{stem}.gate_up_proj_blocks" in reader:
            gate_up = decode_mxfp4(row("gate_up_proj_blocks"), row("gate_up_proj_scales"))  # [2I, H]
            down = decode_mxfp4(row("down_proj_blocks"), row("down_proj_scales"))  # [H, I]
        else:
            gate_up, down = row("gate_up_proj").t(), row("down_proj").t()
        bias = row("gate_up_proj_bias")  # [2I]
        return ExpertWeights(gate_up[0::2], gate_up[1::2], down, bias[0::2], bias[1::2], row("down_proj_bias"))
