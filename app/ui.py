"""The page: layout, element ids and event wiring. Handlers live in app.callbacks."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from app import models
from app.callbacks import Controller, status_html
from moepic_core.cache.policies import POLICY_CHOICES
from moepic_core.fit import QUANT_CHOICES
from app.header import header_html
from app.live import follow_engine
from app.panels import heatmap_html, hitrate_chart_html, split_chart_html, stats_html
from app.session import Session

CSS_FILE = Path(__file__).resolve().parent.parent / "assets" / "app.css"
ENGINE = dict(concurrency_id="engine", concurrency_limit=1)  # one GPU: engine events run one at a time


def build(c: Controller) -> gr.Blocks:
    cfg = c.config
    with gr.Blocks(title="MoEpic", analytics_enabled=False) as demo:
        session = gr.State(lambda: Session())  # this tab's own status, replies and speed (a fresh Session per tab)
        gr.HTML(header_html(c.hw), elem_id="header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=360):
                chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", show_label=False, height=440, layout="bubble")
                chat_input = gr.Textbox(elem_id="chat-input", show_label=False, lines=1,
                                        placeholder="Type a message and press Enter…", autofocus=True)
                with gr.Row():
                    send = gr.Button("Send", elem_id="send", variant="primary", scale=1, min_width=70)
                    stop = gr.Button("Stop", elem_id="stop", variant="stop", scale=1, min_width=70)
                    clear = gr.Button("Clear", elem_id="clear", scale=1, min_width=70)
                with gr.Accordion("Generation settings", open=False, elem_id="gen-settings"):
                    system = gr.Textbox(label="System prompt", elem_id="system-prompt", lines=2,
                                        placeholder="Optional instructions given before the chat")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
                    max_new = gr.Slider(1, 2048, value=cfg.max_new_tokens, step=1, label="Max new tokens",
                                        elem_id="max-new-tokens")
                stats = gr.HTML(stats_html(None), elem_id="stats")
            with gr.Column(scale=6, min_width=420):
                with gr.Row(equal_height=True):
                    picker = gr.Dropdown(models.choices(), value=cfg.model, allow_custom_value=True, scale=5,
                                         label="Model: demo, a hub id, or a folder path", elem_id="model-picker")
                    quant = gr.Dropdown(list(QUANT_CHOICES), value=cfg.quant, label="Quantisation (auto: best that fits)", scale=2,
                                        elem_id="quant")
                    load = gr.Button("Load", elem_id="load", scale=1, min_width=70)
                status = gr.HTML(status_html("busy", "Starting…"), elem_id="status")  # page_load fills it
                with gr.Row(equal_height=True):
                    slider = gr.Slider(0.0, 1.0, value=1.0, label="VRAM budget (GB)", interactive=False, scale=5,
                                       elem_id="vram-slider")
                    policy = gr.Dropdown(list(POLICY_CHOICES), value=cfg.policy, label="Cache policy", scale=2,
                                         elem_id="policy")
                heatmap = gr.HTML(heatmap_html(None), elem_id="cache-heatmap")
                hitrate = gr.HTML(hitrate_chart_html(None), elem_id="hitrate-chart")
                split = gr.HTML(split_chart_html(None), elem_id="split-chart")
        panel_outputs = [heatmap, split, hitrate, stats]

        chat_inputs = [chat_input, chatbot, system, temperature, top_p, max_new, session]
        chat_outputs = [chat_input, chatbot, *panel_outputs, status, session]
        sent = send.click(c.chat, chat_inputs, chat_outputs, api_name="chat", show_progress="hidden", **ENGINE)
        submitted = chat_input.submit(c.chat, chat_inputs, chat_outputs, api_name="chat_enter",
                                      api_visibility="undocumented", show_progress="hidden", **ENGINE)
        stop.click(None, None, None, cancels=[sent, submitted], api_name="stop")
        clear.click(lambda: ([], ""), None, [chatbot, chat_input], api_name="clear", cancels=[sent, submitted])

        picker.change(c.validate, [picker, quant], status, api_name="validate")
        quant.change(c.validate, [picker, quant], status, api_visibility="undocumented")
        loaded_outputs = [status, slider, *panel_outputs, temperature, top_p, session]  # sampling: the model's
        load.click(c.load_model, [picker, quant, policy, session], loaded_outputs, api_name="load_model", **ENGINE)
        slider.release(c.set_vram, [slider, session], [status, *panel_outputs, session], api_name="set_vram", **ENGINE)
        policy.input(c.set_policy, [policy, session], [status, *panel_outputs, session], api_name="set_policy",
                     **ENGINE)
        demo.load(c.page_load, session, loaded_outputs, api_name="page_load", concurrency_limit=None)
        follow_engine(c.worker, session, panel_outputs)  # API requests and other tabs show in the panels too
    return demo


def launch_kwargs(host: str, port: int, share: bool = False, inbrowser: bool = False) -> dict:
    """Offline-safe launch settings: no analytics, no share link unless asked, no external fonts."""
    theme = gr.themes.Default(primary_hue="blue", font=["system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return dict(server_name=host, server_port=port, share=share, inbrowser=inbrowser, footer_links=[],
                enable_monitoring=False, ssr_mode=False, pwa=False, mcp_server=False, show_error=True,
                theme=theme, css=CSS_FILE.read_text() if CSS_FILE.is_file() else None, quiet=True)

