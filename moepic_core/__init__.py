"""MoEpic: run large Mixture-of-Experts models with experts offloaded to host RAM.

`from moepic_core import Engine` — see engine.py. Submodules that are plain Python (cache policies,
simulator, solver) import without torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Engine"]


def __getattr__(name):
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)
