"""Serve the app on a free local port for tests (API and browser), with the real engine."""
from __future__ import annotations

from pathlib import Path


def start_server(model: str | Path, first_port: int = 7870, api=None, **config):
    """Serve `model` (page and API; `api`: app.api.ApiSettings) on 127.0.0.1 and wait until it is
    loaded. Returns (served, url, controller); stop it with `stop_server(served, controller)`."""
    import app  # noqa: F401 - offline environment before gradio loads
    from app.callbacks import Controller
    from app.config import AppConfig
    from app.header import detect_hardware
    from app.server import serve
    from launch import free_port

    controller = Controller(AppConfig(model=str(model), **config), detect_hardware())
    served = serve(controller, port=free_port("127.0.0.1", first_port), api=api)
    if controller.worker.wait_loaded(timeout=300) is None:
        stop_server(served, controller)
        raise RuntimeError(f"the app could not load {model}: {controller.worker.load_error}")
    return served, served.url, controller


def stop_server(served, controller) -> None:
    served.close()
    controller.worker.shutdown()
