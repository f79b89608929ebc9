"""One HTTP server for the page and the API: a FastAPI app with the OpenAI-compatible API at /v1 and
the Gradio page mounted at / (or no page with `page=False`), run by uvicorn on a background thread.

    served = serve(controller, host="127.0.0.1", port=7860)
    served.url                     # http://127.0.0.1:7860/ ; the API is served.url + "v1"
    served.block()                 # until Ctrl+C; served.close() stops it
"""
from __future__ import annotations

import logging
import secrets
import time
import webbrowser
from dataclasses import dataclass

import gradio as gr
import uvicorn
from fastapi import FastAPI
from gradio.http_server import Server
from starlette.routing import Mount

from app.api import ApiSettings, build_api
from app.callbacks import Controller

LAUNCH_ONLY = ("share", "inbrowser", "quiet")  # ui.launch_kwargs that mounting the page does not take
SHUTDOWN_S = 2  # open streams get this long to end when the server stops

log = logging.getLogger("moepic.server")


@dataclass
class Served:
    url: str  # the page (and the API under url + "v1")
    server: Server
    api: FastAPI  # the app mounted at /v1 (its state.admission counts requests)
    demo: gr.Blocks | None = None
    page_app: FastAPI | None = None  # gradio's app, mounted at /
    share_url: str | None = None

    def close(self) -> None:
        if self.demo is not None:
            self.demo.close(verbose=False)  # stops gradio's queue
            self.page_app.stop_event.set()  # ends the page's heartbeat streams
        self.server.close()

    def block(self) -> None:
        """Wait until the server stops or Ctrl+C, then close it."""
        try:
            while self.server.thread.is_alive():
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        self.close()


def build_root(controller: Controller, host: str, port: int, page: bool, api: ApiSettings):
    """The FastAPI app: /v1 first, then the page at / (a mount at / takes every other path)."""
    from app.ui import build, launch_kwargs

    root = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    root.mount("/v1", build_api(controller.worker, api))
    if not page:
        return root, None
    demo = build(controller)
    demo.queue(max_size=32, default_concurrency_limit=4)
    options = {k: v for k, v in launch_kwargs(host, port).items() if k not in LAUNCH_ONLY}
    gr.mount_gradio_app(root, demo, path="/", **options)
    return root, demo


def start_http(controller: Controller, host: str, port: int, page: bool = True,
               api: ApiSettings | None = None) -> Served:
    """Serve the app for `controller` (whatever it has loaded or is loading) without blocking."""
    root, demo = build_root(controller, host, port, page, api or ApiSettings())
    server = Server(uvicorn.Config(root, host=host, port=port, log_level="warning",
                                   timeout_graceful_shutdown=SHUTDOWN_S))
    server.run_in_thread()
    url = f"http://{'localhost' if host == '0.0.0.0' else host}:{port}/"
    mounted = {route.path: route.app for route in root.routes if isinstance(route, Mount)}
    return Served(url, server, mounted["/v1"], demo, mounted.get(""))


def serve(controller: Controller, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          inbrowser: bool = False, page: bool = True, api: ApiSettings | None = None) -> Served:
    """Start loading the model and serve the page and the API without blocking."""
    controller.start()
    served = start_http(controller, host, port, page, api)
    if share and page:
        served.share_url = share_link(host, port)
    if inbrowser and page:
        webbrowser.open(served.url)
    return served


def share_link(host: str, port: int) -> str | None:
    """A public gradio.live link to the local server, as `launch(share=True)` makes (needs internet)."""
    from gradio import networking

    try:
        return networking.setup_tunnel(host, port, secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # noqa: BLE001 - offline: the local server still runs
        log.warning("no share link: %s", exc)
        return None
