"""Live panels for traffic this tab did not start (API requests, other tabs): a timer redraws the
panels whenever the engine has a snapshot newer than the one this tab last drew. The cache panels show
the engine; the hit-rate chart and the speed stay this tab's own (its Session)."""
from __future__ import annotations

from functools import partial

import gradio as gr

from app.callbacks import panels

REFRESH_S = 0.25  # the chat's own stream redraws at up to 10 Hz; idle tabs follow at 4 Hz


def redraw(worker, drawn: int, session):
    """(version drawn, heatmap, split chart, hit-rate chart, stats), or skips if nothing is new."""
    version, snap = worker.snapshot_version, worker.last_snapshot
    if version == drawn or snap is None:
        return (gr.skip(),) * 5
    return (version, *panels(snap, session))


def follow_engine(worker, session: gr.State, panel_outputs: list) -> None:
    """Inside the page's Blocks: keep `panel_outputs` (heatmap, split, hit rate, stats) live for the tab
    whose Session is `session`."""
    drawn = gr.State(0)
    timer = gr.Timer(REFRESH_S)
    timer.tick(partial(redraw, worker), [drawn, session], [drawn, *panel_outputs], show_progress="hidden",
               queue=False, api_visibility="private")
