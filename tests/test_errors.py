"""One error policy: what a user can fix is a MoepicError, shown as its own message (the app) or one line
with exit status 2 (the CLIs); anything else is a bug, logged once with its traceback and shown as a
short line. Running out of memory is a named error the app knows by its type."""
from __future__ import annotations

import logging

import pytest
import torch

from moepic_core import Engine
from moepic_core.errors import GenerationError, ModelLoadError, MoepicError, OutOfMemoryError

PROMPT = [1, 2, 3, 4]


@pytest.mark.parametrize("failure, where", [(torch.OutOfMemoryError("CUDA out of memory"), "GPU"),
                                            (MemoryError(), "host")])
def test_out_of_memory_is_a_named_error_and_the_engine_goes_on(tiny_models, monkeypatch, failure, where):
    engine = Engine.load(tiny_models["mixtral"], device="cpu", cache_gb=0)
    expected = engine.generate(PROMPT, 4)

    def out_of_memory(*args, **kwargs):
        raise failure

    monkeypatch.setattr(engine.model, "forward", out_of_memory)
    with pytest.raises(OutOfMemoryError, match=f"out of {where} memory while generating") as err:
        engine.generate(PROMPT, 4)
    assert isinstance(err.value, GenerationError) and err.value.__cause__ is failure
    monkeypatch.undo()
    assert engine.generate(PROMPT, 4) == expected


def test_out_of_memory_while_loading_is_a_named_error(tiny_models, monkeypatch):
    from moepic_core.runtime import engine as engine_module

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine_module, "build_dense_model", no_memory)
    with pytest.raises(OutOfMemoryError, match="out of GPU memory while loading the model: choose a smaller"):
        Engine.load(tiny_models["mixtral"], device="cpu", cache_gb=0)


def test_out_of_memory_while_re_laying_out_keeps_the_layout_that_fit(tiny_models, monkeypatch):
    from moepic_core.runtime import offload

    engine = Engine.load(tiny_models["mixtral"], device="cpu", cache_gb=0)
    expected, layout = engine.generate(PROMPT, 4), engine.runtime.layout.to_dict()
    real_pool = offload.SlotPool

    def pool_or_no_memory(new_layout, *args, **kwargs):
        if new_layout.to_dict() != layout:  # the bigger cache does not fit; the old one still does
            raise MemoryError()
        return real_pool(new_layout, *args, **kwargs)

    monkeypatch.setattr(offload, "SlotPool", pool_or_no_memory)
    with pytest.raises(OutOfMemoryError, match="out of host memory while re-laying out the cache: the previous"):
        engine.reconfigure(cache_gb=1.0)
    assert engine.runtime.layout.to_dict() == layout and engine.cfg.cache_gb == 0
    assert engine.generate(PROMPT, 4) == expected


class FailingWorker:
    """A loaded worker whose generation fails with `exc` before the first token."""

    def __init__(self, exc: BaseException):
        self.exc, self.engine, self.last_snapshot, self.load_error = exc, object(), None, None

    def stream(self, prompt, **options):
        raise self.exc
        yield  # a generator, as EngineWorker.stream


def chat_reply(exc: BaseException) -> tuple[str, str]:
    """(the reply's last message, the status line) after a chat whose generation raised `exc`."""
    from app.callbacks import Controller
    from app.config import AppConfig
    from app.session import Session

    controller = Controller(AppConfig(device="cpu"), {"cuda": False}, worker=FailingWorker(exc))
    *_, last = controller.chat("hello", [], "", 0.0, 1.0, 8, Session())
    return last[1][-1]["content"], last[-2]


def test_the_app_shows_an_out_of_memory_error_as_the_engine_words_it(caplog):
    message = "out of GPU memory while generating: lower the VRAM budget, use int4 or shorten the conversation"
    with caplog.at_level(logging.ERROR):
        reply, status = chat_reply(OutOfMemoryError(message))
    assert reply.endswith(f"⚠ {message}") and "mp-error" in status and "lower the VRAM budget" in status
    assert caplog.records == []  # a user's limit, not a bug: nothing to log


def test_the_app_logs_a_bug_once_with_its_traceback_and_shows_a_short_line(caplog):
    with caplog.at_level(logging.ERROR):
        reply, status = chat_reply(KeyError("slot 7"))
    assert reply.endswith("⚠ internal error while generating (KeyError); the details are in the server's log")
    assert "internal error while generating" in status and "slot 7" not in reply
    assert len(caplog.records) == 1 and caplog.records[0].exc_info[1].args == ("slot 7",)


def test_a_failed_load_is_recorded_in_the_users_words_or_as_a_logged_bug(caplog):
    from app.worker import EngineWorker, NoModelError

    def load(error):
        def factory(model, progress, **kwargs):
            raise error
        worker = EngineWorker(factory)
        with pytest.raises(type(error)):
            worker.load("stand-in").result(timeout=10)
        return worker

    with caplog.at_level(logging.ERROR):
        refused = load(ModelLoadError("model folder not found: x"))
        assert refused.load_error == "model folder not found: x"
        refused.shutdown()
        assert caplog.records == []
        worker = load(ZeroDivisionError("division by zero"))
    assert worker.load_error == ("internal error while loading stand-in (ZeroDivisionError); "
                                 "the details are in the server's log")
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
    assert issubclass(NoModelError, MoepicError)
    with pytest.raises(NoModelError, match="internal error while loading stand-in"):
        worker.call(lambda engine: None)
    worker.shutdown()
