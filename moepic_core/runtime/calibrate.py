"""Calibration trace: the routing the solver's hit-rate curves (and the static policy) come from.

Looked up in this order: `routing_trace.npz` shipped beside the model (the demo model has one);
the trace saved for this model's packed store (`<store>.trace.npz` in the cache folder); else
recorded now by decoding a few built-in prompts, then saved there (atomically) for next time.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..plan.trace import RoutingTrace, TraceError

log = logging.getLogger(__name__)

SHIPPED_NAME = "routing_trace.npz"
PROMPTS = (
    "Tell me a short story about a lighthouse keeper.",
    "Explain how a mixture-of-experts language model routes tokens.",
    "Write a letter to a friend about the weather this week.",
    "What should I cook tonight? Give me three ideas.",
)


def trace_path(engine) -> Path:
    store = engine.runtime.store.path
    return store.with_name(store.stem + ".trace.npz")


def record(engine, tokens_per_prompt: int = 32) -> RoutingTrace:
    """Decode the built-in prompts greedily and return their decode-step routing."""
    parts = []
    for prompt in PROMPTS:
        if engine.tokenizer is None:
            ids = [0]
        elif getattr(engine.tokenizer, "chat_template", None):
            from .text import chat_input_ids

            ids = chat_input_ids(engine.tokenizer, [{"role": "user", "content": prompt}])
        else:
            ids = engine.tokenizer(prompt)["input_ids"]
        engine.start_trace()
        engine.generate(ids, tokens_per_prompt, stop_at_eos=False)
        parts.append(engine.stop_trace())
    return RoutingTrace(np.concatenate([p.experts for p in parts]), np.concatenate([p.predicted for p in parts]),
                        engine.spec.num_experts, engine.spec.top_k, engine.spec.name)


def calibration_trace(engine) -> RoutingTrace:
    spec = engine.spec
    for path in (engine.folder / SHIPPED_NAME, trace_path(engine)):
        if not path.exists():
            continue
        try:
            trace = RoutingTrace.load(path)
        except TraceError as e:
            log.warning("ignoring calibration trace %s: %s", path, e)
            continue
        if trace.num_layers == spec.num_moe_layers and trace.num_experts <= spec.num_experts:
            trace.num_experts = spec.num_experts
            return trace
        log.warning("ignoring calibration trace %s: made for another model shape", path)
    trace = record(engine)
    trace.save(trace_path(engine))
    return trace
