"""StopStrings: cut a streamed reply at the first of the request's `stop` strings.

Text that could be the start of a stop string is held back until the next chunk decides, so a
stop string split across two tokens is never sent: `feed` returns only text that is safe to send.
"""
from __future__ import annotations


class StopStrings:
    def __init__(self, stops: tuple[str, ...] | list[str] = ()):
        self.stops = tuple(s for s in stops if s)
        self.held = ""  # received but not yet sent
        self.stopped = False

    def _held_back(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def feed(self, chunk: str) -> str:
        """Text to send now; sets `stopped` once a stop string has appeared (it is never sent)."""
        if self.stopped or not chunk:
            return ""
        text = self.held + chunk
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, self.held = True, ""
            return text[:min(cuts)]
        keep = self._held_back(text)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        """At the end of the reply: whatever was held back (no stop string completed it)."""
        text, self.held = ("" if self.stopped else self.held), ""
        return text
