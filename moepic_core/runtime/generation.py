"""The decode loop: prefill, then one token per step through a DynamicCache, with sampling.

A manual loop rather than `model.generate`: it reproduces greedy `generate` token for token and
gives one place to time each step, check the stop event between steps, and stream tokens.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class SamplingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    min_new_tokens: int = 0  # the end-of-reply tokens are banned before this many new tokens (as transformers does)

    def __post_init__(self):
        from ..options import bad

        for name, ok in (("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p <= 1),
                         ("top_k", self.top_k >= 0), ("min_new_tokens", self.min_new_tokens >= 0)):
            if not ok:
                raise bad(name, getattr(self, name))

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


def choose_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> int:
    """logits [V] (float32) -> token id: argmax, or temperature / top-k / top-p sampling."""
    if cfg.greedy:
        return int(logits.argmax())
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p > cfg.top_p  # keep the smallest prefix reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def decode_tokens(model, input_ids: torch.Tensor, max_new_tokens: int, cfg: SamplingConfig,
                  eos_ids: set[int], stop_event=None,
                  on_step: Callable[[float, bool], None] | None = None) -> Iterator[int]:
    """Yield new token ids. `on_step(seconds, is_decode)` is called after each forward step."""
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    cache = DynamicCache(config=model.config)
    ids = input_ids
    for step in range(max_new_tokens):
        if stop_event is not None and stop_event.is_set():
            return
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1].float()
            if step < cfg.min_new_tokens and eos_ids:
                logits[list(eos_ids)] = float("-inf")
            token = choose_token(logits, cfg, generator)
        if on_step is not None:
            on_step(time.perf_counter() - start, step > 0)
        yield token
        if token in eos_ids:
            return
        ids = torch.tensor([[token]], device=input_ids.device)
