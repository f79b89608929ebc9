"""The OpenAI wire format: requests parsed and checked into one dataclass, replies and errors built
as OpenAI clients expect them. Plain Python (no torch, no web framework).

A request field that is wrong, or a feature MoEpic does not have (`n` > 1, images), is refused
with APIError(400) naming the field; fields MoEpic does not use (`user`, penalties, …) are ignored.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

MAX_STOP_STRINGS = 4
ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """An error reply: HTTP status plus OpenAI's `{"error": {message, type, param, code}}`."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             429: "rate_limit_exceeded", 503: "server_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, f"{param}: {message}", code=code, param=param)


@dataclass(frozen=True)
class GenerationRequest:
    """One chat or completion request, checked. `max_tokens` None: up to the end of the context;
    `temperature` / `top_p` None: the model's recommended sampling."""
    kind: str  # "chat" | "text"
    model: str | None = None
    messages: tuple[dict, ...] = ()  # chat: {"role", "content": str[, "name"]}
    prompt: str | tuple[int, ...] = ""  # text: a string or token ids
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: one more chunk carrying usage


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or APIError(400)."""
    try:
        body = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    return body


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(name, f"must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise bad(name, f"must be in {interval}, got {value!r}")
    return float(value)


def _integer(body: dict, name: str, low: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"must be an integer, got {value!r}")
    if low is not None and value < low:
        raise bad(name, f"must be >= {low}, got {value}")
    return value


def _max_tokens(body: dict) -> int | None:
    names = [n for n in ("max_completion_tokens", "max_tokens") if body.get(n) is not None]
    return _integer(body, names[0], low=1) if names else None


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad("stop", f"at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
    return tuple(stops)


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool):
        raise bad("stream", f"must be true or false, got {stream!r}")
    if not isinstance(options, dict):
        raise bad("stream_options", "must be an object")
    return stream, bool(options.get("include_usage")) and stream


def _common(body: dict) -> dict:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", f"must be a string, got {model!r}")
    n = _integer(body, "n", low=1)
    if n not in (None, 1):
        raise bad("n", f"only one choice per request is supported, got {n}", code="unsupported_value")
    stream, include_usage = _stream(body)
    return dict(model=model or None, max_tokens=_max_tokens(body), stream=stream, include_usage=include_usage,
                temperature=_number(body, "temperature", 0.0, 2.0), top_p=_number(body, "top_p", 0.0, 1.0, True),
                stop=_stop(body), seed=_integer(body, "seed"))


def message_content(content, where: str) -> str:
    """A message's content as text: a string, or a list of text parts (no images or audio)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad(where, "must be a string or a list of content parts")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad(where, "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                      code="unsupported_value")
        texts.append(part["text"])
    return "".join(texts)


def _message(message, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad(where, "must be an object with a role and content")
    role = message.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    out = {"role": "system" if role == "developer" else role,
           "content": message_content(message.get("content"), f"{where}.content")}
    if isinstance(message.get("name"), str) and message["name"]:
        out["name"] = message["name"]
    return out


def parse_chat(body: dict) -> GenerationRequest:
    messages = body.get("messages")
    if messages is None:
        raise bad("messages", "is required", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list of {role, content} objects")
    checked = tuple(_message(m, i) for i, m in enumerate(messages))
    if not any(m["role"] == "user" and m["content"].strip() for m in checked):
        raise bad("messages", "needs at least one user message with text")
    return GenerationRequest(kind="chat", messages=checked, **_common(body))


def parse_completion(body: dict) -> GenerationRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt:
        what = "is required" if prompt is None else "must be one non-empty string or one list of token ids"
        raise bad("prompt", what, code="missing_required_parameter" if prompt is None else "invalid_value")
    return GenerationRequest(kind="text", prompt=prompt, **_common(body))


# ---- replies ----

def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Reply:
    """Builds one request's reply objects; every chunk of a stream shares its id and time."""
    kind: str  # "chat" | "text"
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self):
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = self.created or int(time.time())

    def _object(self, name: str, choice: dict, **extra) -> dict:
        return {"id": self.id, "object": name, "created": self.created, "model": self.model,
                "choices": [choice] if choice else [], **extra}

    def complete(self, text: str, finish_reason: str, usage_: dict, figures: dict) -> dict:
        """The whole reply (stream: false)."""
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": finish_reason, "logprobs": None}
            return self._object("chat.completion", choice, usage=usage_, moepic=figures)
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return self._object("text_completion", choice, usage=usage_, moepic=figures)

    def chunk(self, text: str | None = None, finish_reason: str | None = None, first: bool = False,
              **extra) -> dict:
        """One streamed chunk; the chat stream's first one carries the role."""
        if self.kind == "chat":
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return self._object("chat.completion.chunk", choice, **extra)
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return self._object("text_completion", choice, **extra)

    def usage_chunk(self, usage_: dict, figures: dict) -> dict:
        """The extra last chunk of `stream_options.include_usage`: no choices, only usage."""
        name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return self._object(name, {}, usage=usage_, moepic=figures)


def model_list(model_id: str | None, created: int) -> dict:
    data = [{"id": model_id, "object": "model", "created": created, "owned_by": "moepic"}] if model_id else []
    return {"object": "list", "data": data}
