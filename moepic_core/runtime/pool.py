"""Device memory for experts: per-layer slot pools and the staging ring, plus the copy engine.

SlotPool: MoE layer `pos` has `slots[pos]` slots of `rows[pos]` rows (the top segment at the
layer's split ratio), all views into one flat uint8 buffer whose size is the cache budget.
Staging: `n` buffers of one whole expert each, for fetched bottoms and misses; sized for one
token's worst case (all k experts of this layer missing while the next layer's guesses arrive).
Transfer: on CUDA copies run on a side stream and return an event the consumer waits on (no host
sync); on the CPU they are plain synchronous copies and events are None. Streams and events are
bound to the engine's device (not the current one), so `cuda:1` waits on its own copies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import Layout


class Transfer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def copy(self, dst: torch.Tensor, src: torch.Tensor, after=None):
        """dst <- src; on CUDA asynchronously after event `after`; returns the completion event."""
        if not self.cuda:
            dst.copy_(src)
            return None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            dst.copy_(src, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return done

    def wait(self, event) -> None:
        """Make the device's compute stream wait for `event` (nothing on the CPU)."""
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def mark(self):
        """An event after the work queued so far on the device's compute stream (None on the CPU)."""
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event


class SlotPool:
    def __init__(self, layout: Layout, intermediate_size: int, row_bytes: int, device: torch.device,
                 allocate: bool = True):
        """`allocate=False`: the geometry only (in place, the store's own bytes are the slots)."""
        self.rows = [p.top_rows(intermediate_size) for p in layout.layers]
        self.slots = [p.slots for p in layout.layers]
        sizes = [s * r * row_bytes for s, r in zip(self.slots, self.rows)] if allocate else [0] * len(self.slots)
        self.nbytes = sum(sizes)
        self.buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=device)
        self.views, offset = [], 0
        for s, r, size in zip(self.slots, self.rows, sizes):
            self.views.append(self.buffer[offset:offset + size].view(s, r, row_bytes) if allocate else None)
            offset += size

    def slot(self, pos: int, slot: int) -> torch.Tensor:
        """uint8 [rows[pos], row_bytes] of one slot."""
        return self.views[pos][slot]


@dataclass
class Staged:
    buffer: int
    start: int  # first row held (0 = whole expert, rows[pos] = bottom only)
    stop: int  # one past the last row held
    ready: object  # event (CUDA) or None; None too while a prefetch's chunks are still queued
    prefetched: bool
    nbytes: int

    def covers(self, start: int, stop: int) -> bool:
        return self.start <= start and stop <= self.stop


class Staging:
    """A ring of whole-expert buffers keyed by (pos, expert)."""

    def __init__(self, n: int, intermediate_size: int, row_bytes: int, device: torch.device):
        self.n = n
        self.buf = torch.empty(n, intermediate_size, row_bytes, dtype=torch.uint8, device=device)
        self.entries: dict[tuple[int, int], Staged] = {}
        self.free_after = [None] * n  # event after the last compute that read the buffer
        self.free = list(range(n))

    @property
    def nbytes(self) -> int:
        return self.buf.numel()

    def reserve(self, key: tuple[int, int], start: int, rows: int, row_bytes: int, prefetched: bool = False) -> Staged:
        """Take a free buffer for rows `[start, start + rows)` of an expert: the least recently
        released one, so a copy into it rarely waits on compute just queued on it."""
        i = self.free.pop(0)
        entry = Staged(i, start, start + rows, None, prefetched, rows * row_bytes)
        self.entries[key] = entry
        return entry

    def target(self, entry: Staged) -> torch.Tensor:
        """The buffer rows an entry's copy writes."""
        return self.buf[entry.buffer, :entry.stop - entry.start]

    def fetch(self, key: tuple[int, int], src: torch.Tensor, start: int, transfer: Transfer) -> Staged:
        """Copy `src` (uint8 [rows, row_bytes], rows `start`.. of the expert) into a free buffer now."""
        entry = self.reserve(key, start, src.shape[0], src.shape[1])
        entry.ready = transfer.copy(self.target(entry), src, after=self.free_after[entry.buffer])
        return entry

    def rows(self, entry: Staged, start: int, stop: int) -> torch.Tensor:
        return self.buf[entry.buffer, start - entry.start:stop - entry.start]

    def release(self, key: tuple[int, int], done_event=None) -> Staged | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.free_after[entry.buffer] = done_event
            self.free.append(entry.buffer)
        return entry

    def clear(self) -> None:
        for key in list(self.entries):
            self.release(key)
