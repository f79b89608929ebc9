"""MoEpic: run large Mixture-of-Experts models with experts offloaded to host RAM.

`from moepic_core import Engine` — see runtime/engine.py. The layers (README, "Code map"): the base
modules here (spec, layout, budget, config, options, errors, units, fsutil, fit, presets, hub) and
`cache/` and `plan/` are plain Python and import without torch; `runtime/` and `models/` need torch;
`cli/` holds the command lines.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Engine"]


def __getattr__(name):
    if name == "Engine":
        from .runtime.engine import Engine

        return Engine
    raise AttributeError(name)
