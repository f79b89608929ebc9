"""Text around the engine: chat prompts to token ids, and streaming detokenisation."""
from __future__ import annotations

from ..errors import GenerationError


def chat_input_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` through the model's chat template, ready for the assistant's turn."""
    if not messages or not any(str(m.get("content") or "").strip() for m in messages if m.get("role") == "user"):
        raise GenerationError("empty message: type something to send")
    if not str(messages[-1].get("content") or "").strip():
        raise GenerationError("empty message: type something to send")
    if getattr(tokenizer, "chat_template", None) is None:
        raise GenerationError("this model has no chat template; use raw prompts (--raw)")
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return list(ids)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text chunks, holding back incomplete UTF-8."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return ""
        chunk, self.sent = text[len(self.sent):], text
        return chunk

    def flush(self) -> str:
        text = self._text()
        chunk, self.sent = text[len(self.sent):], text
        return chunk
