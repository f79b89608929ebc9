"""Where a checkpoint keeps each routed expert, found from its key names.

Two layouts cover the hub and `save_pretrained` for every family with plain experts:
  per-expert: <stem>.<e>.{gate_proj|w1}.weight [I, H], .{up_proj|w3}.weight [I, H], .{down_proj|w2}.weight [H, I]
  fused     : <stem>.gate_up_proj [E, 2I, H] (gate rows, then up rows), <stem>.down_proj [E, H, I]
where <stem> is "<prefix>.layers.<l>.<block>.experts" and the prefix is whatever the checkpoint uses
("model", "model.language_model"). A fused expert is read as its own row of the fused tensor
(`CheckpointReader.row`), so packing never holds a whole layer. Families with other layouts (Granite-MoE, GPT-OSS) override the
adapter's `locate`/`expert_weights`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ModelLoadError

EXPERT_KEY = re.compile(r"^(?P<stem>.+\.layers\.(?P<layer>\d+)\.\w+\.experts)\.(?:\d+\.\w+\.weight|(?:gate_up|down)_proj\w*)$")
PER_EXPERT_NAMES = {"gate_proj": ("gate_proj", "up_proj", "down_proj"), "w1": ("w1", "w3", "w2")}


@dataclass(frozen=True)
class PerExpert:
    stem: str
    names: tuple[str, str, str]  # gate, up, down

    def keys(self, expert: int) -> list[str]:
        return [f"{self.stem}.{expert}.{name}.weight" for name in self.names]


@dataclass(frozen=True)
class Fused:
    gate_up: str  # [E, 2I, H]
    down: str  # [E, H, I]


def expert_stems(keys) -> dict[int, set[str]]:
    """decoder layer -> the expert stems its keys use (normally one)."""
    stems: dict[int, set[str]] = {}
    for key in keys:
        m = EXPERT_KEY.match(key)
        if m:
            stems.setdefault(int(m["layer"]), set()).add(m["stem"])
    return stems


def locate_layer(keys, stems: set[str], layer: int):
    """The PerExpert or Fused source of one layer's experts among `keys`."""
    if len(stems) != 1:
        found = ", ".join(sorted(stems)) or "none"
        raise ModelLoadError(f"layer {layer}: expected the routed experts under one key prefix, found {found}")
    (stem,) = stems
    if f"{stem}.gate_up_proj" in keys and f"{stem}.down_proj" in keys:
        return Fused(f"{stem}.gate_up_proj", f"{stem}.down_proj")
    for first, names in PER_EXPERT_NAMES.items():
        if f"{stem}.0.{first}.weight" in keys:
            return PerExpert(stem, names)
    raise ModelLoadError(f"layer {layer}: no per-expert ({stem}.0.gate_proj.weight) or fused "
                         f"({stem}.gate_up_proj) expert weights; unknown expert layout")
