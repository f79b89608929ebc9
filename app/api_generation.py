"""One API request's generation, run on the engine thread: prompt ids (the chat template renders
chat messages), the token budget, sampling, stop strings, and the request's own MoEpic figures.

`generate` yields `Started`, then text chunks, then `Finished`; anything wrong with the request is
an APIError before `Started`, so a streamed reply can still answer it with a status code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from moepic_core.errors import GenerationError
from moepic_core.runtime.stats import Totals
from moepic_core.runtime.text import IncrementalDetokenizer, chat_input_ids

from app.openai_schema import APIError, GenerationRequest, bad
from app.stop_strings import StopStrings


@dataclass(frozen=True)
class Started:
    model: str
    prompt_tokens: int
    queue_wait_s: float  # from arrival to the engine starting on it


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop": end of reply or a stop string; "length": max_tokens or the context
    completion_tokens: int
    figures: dict  # the `moepic` extension field


def context_tokens(engine) -> int:
    """Prompt plus reply tokens the engine serves: its KV reserve, within the model's positions."""
    positions = getattr(engine.model.config, "max_position_embeddings", None) or engine.cfg.max_context
    return min(engine.cfg.max_context, positions)


def prompt_ids(engine, request: GenerationRequest) -> list[int]:
    if engine.tokenizer is None:
        raise APIError(400, f"{engine.spec.name} has no tokenizer: the API cannot serve text", code="no_tokenizer")
    if request.kind == "chat":
        try:
            return chat_input_ids(engine.tokenizer, [dict(m) for m in request.messages])
        except GenerationError as exc:
            raise bad("messages", str(exc)) from None
    if isinstance(request.prompt, tuple):
        vocab = engine.model.config.vocab_size
        if not all(0 <= t < vocab for t in request.prompt):
            raise bad("prompt", f"token ids must be in [0, {vocab})")
        return list(request.prompt)
    return list(engine.tokenizer(request.prompt)["input_ids"])


def token_budget(engine, request: GenerationRequest, prompt_tokens: int) -> int:
    """`max_tokens`, or what is left of the context when it is not given; 400 past the context."""
    context = context_tokens(engine)
    room = context - prompt_tokens
    where = "messages" if request.kind == "chat" else "prompt"
    if room < 1:
        raise bad(where, f"the prompt is {prompt_tokens} tokens; the context holds {context}",
                  code="context_length_exceeded")
    if request.max_tokens is None:
        return room
    if request.max_tokens > room:
        raise bad("max_tokens", f"{request.max_tokens} new tokens after a {prompt_tokens}-token prompt pass the "
                                f"context of {context} tokens (at most {room})", code="context_length_exceeded")
    return request.max_tokens


def sampling(engine, request: GenerationRequest) -> dict:
    """engine.tokens' options; temperature 0 is greedy, unset fields take the model's defaults."""
    defaults = engine.sampling_defaults
    temperature = defaults["temperature"] if request.temperature is None else request.temperature
    top_p = defaults["top_p"] if request.top_p is None else request.top_p
    return dict(do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p, seed=request.seed)


def request_figures(before: Totals, after: Totals, tokens: int, first_s: float | None, last_s: float,
                    started: Started) -> dict:
    """The `moepic` field from engine totals before and after the request (times in seconds from
    the engine starting on it)."""
    hits, misses = after.hits - before.hits, after.misses - before.misses
    fetched = after.bytes_fetched - before.bytes_fetched
    decode_s = last_s - first_s if first_s is not None else 0.0
    return {
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses > 0 else None,
        "mb_fetched_per_token": round(fetched / tokens / 1e6, 4) if tokens else None,
        "tokens_per_s": round((tokens - 1) / decode_s, 2) if tokens > 1 and decode_s > 0 else None,
        "time_to_first_token_s": round(first_s, 4) if first_s is not None else None,
        "queue_wait_s": round(started.queue_wait_s, 4),
    }


def generate(engine, model: str, request: GenerationRequest, stop, arrived: float):
    """Yield Started, text chunks, Finished. `arrived` is the request's time.perf_counter()."""
    t0 = time.perf_counter()
    if request.model is not None and request.model != model:
        raise APIError(404, f"model {request.model!r} is not loaded; this server has {model!r} (GET /v1/models)",
                       code="model_not_found", param="model")
    ids = prompt_ids(engine, request)
    budget = token_budget(engine, request, len(ids))
    options = sampling(engine, request)
    before = engine.snapshot().totals
    started = Started(model, len(ids), t0 - arrived)
    yield started
    stops, detok = StopStrings(request.stop), IncrementalDetokenizer(engine.tokenizer)
    count, last, first_s = 0, None, None
    for last in engine.tokens(ids, budget, stop_event=stop, **options):
        count += 1
        first_s = time.perf_counter() - t0 if first_s is None else first_s
        text = stops.feed(detok.add(last))
        if text:
            yield text
        if stops.stopped:
            break
    tail = stops.feed(detok.flush()) + stops.flush()
    if tail:
        yield tail
    ended = stops.stopped or (last is not None and engine.ends_reply(last)) or count < budget
    figures = request_figures(before, engine.snapshot().totals, count, first_s, time.perf_counter() - t0, started)
    yield Finished("stop" if ended else "length", count, figures)
