"""Session: what one browser tab has seen (a gr.State), apart from the engine that all tabs share.

The engine counts every decoded token of every tab in one history (`snapshot().history`: one
`TokenRecord` per decode step, `token` counting from the load). A tab keeps the rows of its own replies, so its status line, its speed and its
hit-rate chart are its own. A reply's first token comes out of the prefill step, which the history
does not list: a reply of n tokens has n - 1 rows. Plain Python, no gradio.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from moepic_core.runtime.snapshot import Snapshot
from moepic_core.runtime.stats import TokenRecord

KEEP_ROWS = 512  # decode rows a tab remembers for its chart (the last replies)


@dataclass
class Reply:
    number: int  # 1 for the tab's first reply with this model
    after_token: int  # the engine's token counter when the reply began
    rows: list[TokenRecord] = field(default_factory=list)  # its decode steps, oldest first

    @property
    def tokens(self) -> int:
        """Tokens written, counting the one the prefill step produced."""
        return len(self.rows) + 1

    @property
    def seconds(self) -> float:
        """Decode time (the prefill step is not in the rows)."""
        return sum(1.0 / r.tokens_per_s for r in self.rows if r.tokens_per_s)


@dataclass
class Session:
    status: str = ""  # the status line's HTML for this tab; "" until the tab does something
    replies: list[Reply] = field(default_factory=list)
    model: str | None = None  # the engine's model when the replies were written
    begun: int = 0  # replies begun with this model (old ones are forgotten, their numbers stay)

    def begin_reply(self, snap: Snapshot | None) -> None:
        """Start a reply after the engine's current token count. Another model, or a counter that went
        back (the engine was reloaded or its counters reset), starts the tab's history afresh."""
        after, model = (snap.totals.tokens, snap.model) if snap else (0, None)
        seen = max((r.rows[-1].token if r.rows else r.after_token for r in self.replies), default=0)
        if model != self.model or after < seen:
            self.replies, self.model, self.begun = [], model, 0
        self.begun += 1
        self.replies.append(Reply(self.begun, after_token=after))

    def add(self, snap: Snapshot | None) -> None:
        """Take the rows of the current reply out of an engine snapshot taken while it was written."""
        if snap is None or not self.replies:
            return
        reply = self.replies[-1]
        last = reply.rows[-1].token if reply.rows else reply.after_token
        reply.rows.extend(r for r in snap.history if r.token > last)
        self._forget()

    def _forget(self) -> None:
        """Keep at most KEEP_ROWS rows, dropping whole old replies (the current one always stays)."""
        while len(self.replies) > 1 and sum(len(r.rows) for r in self.replies) > KEEP_ROWS:
            self.replies.pop(0)

    @property
    def last(self) -> Reply | None:
        return self.replies[-1] if self.replies else None

    def totals(self) -> dict:
        """This tab's replies together: tokens, decode seconds and the per-token means of the rows (each
        decode step activates the same number of experts, so the mean of rates is the overall rate)."""
        rows = [r for reply in self.replies for r in reply.rows]
        mean = (lambda key: sum(getattr(r, key) for r in rows) / len(rows)) if rows else (lambda key: None)  # noqa: E731
        seconds = sum(reply.seconds for reply in self.replies)
        return {"replies": len(self.replies), "tokens": sum(reply.tokens for reply in self.replies),
                "decode_tokens": len(rows), "seconds": seconds,
                "tokens_per_s": len(rows) / seconds if seconds else None,
                "hit_rate": mean("hit_rate"), "full_hit_rate": mean("full_hit_rate"),
                "top_hit_rate": mean("top_hit_rate"), "bytes_per_token": mean("bytes"),
                "bytes_per_s": sum(r.bytes for r in rows) / seconds if seconds else None}
