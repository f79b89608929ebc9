"""Controller: the UI's event handlers. Each one validates, hands engine work to the EngineWorker, and
returns HTML/updates; errors become messages in the page, never a dead server."""
from __future__ import annotations

import html
import math
import threading
import time

import gradio as gr
import psutil

from app import models
from app.config import GB, SIMULATED_CACHE_SHARE, AppConfig, cpu_mode, default_vram_gb
from app.panels import fmt_bytes, heatmap_html, hitrate_chart_html, split_chart_html, stats_html
from app.worker import EngineWorker


def status_html(level: str, message: str) -> str:
    icon = {"ok": "✓", "warn": "⚠", "error": "✗", "busy": "…"}.get(level, "")
    return f'<div class="mp-status mp-{level}">{icon} {html.escape(message)}</div>'


def panels(snap: dict | None) -> tuple[str, str, str, str]:
    """(heatmap, split chart, hit-rate chart, stats) HTML from one snapshot."""
    return heatmap_html(snap), split_chart_html(snap), hitrate_chart_html(snap), stats_html(snap)


def message_text(content) -> str:
    """A Chatbot message's content as plain text: it arrives as a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return "" if content is None else str(content)


def vram_range(snap: dict, hw: dict, simulated: bool) -> dict:
    """Slider settings in GB: from the engine's minimum to the GPU's total VRAM (CPU mode: to the
    budget that caches every expert whole, a simulated range)."""
    budgets = snap["budgets"]
    low = budgets["min_vram_bytes"] / GB
    all_experts = snap["num_layers"] * snap["num_experts"] * snap["expert_bytes"] / GB
    high = low + all_experts * 1.05 if simulated else hw.get("vram_total_bytes", 0) / GB
    step = 10 ** math.floor(math.log10(max(high - low, 1e-6) / 100))
    low = math.ceil(low / step - 1e-9) * step
    high = max(low + step, math.ceil(high / step) * step)
    value = budgets["vram_bytes"] / GB if budgets.get("vram_bytes") else high
    digits = max(0, -math.floor(math.log10(step)))
    label = "VRAM budget (GB" + (", simulated: CPU mode)" if simulated else ")")
    return dict(minimum=round(low, digits), maximum=round(high, digits), step=step,
                value=round(min(max(value, low), high), digits), label=label)


class Controller:
    def __init__(self, config: AppConfig, hw: dict, worker: EngineWorker | None = None):
        self.config, self.hw = config, hw
        self.worker = worker or EngineWorker()
        self.simulated = cpu_mode(hw, config.device)
        self.message = status_html("busy", "Starting…")

    # ---- loading ----
    def _load_kwargs(self, quant: str, policy: str) -> dict:
        vram = self.config.vram_gb or default_vram_gb(self.hw, self.config.device)
        mode = dict(cpu_mode="simulated") if self.simulated else {}  # the page shows a cache at work
        return dict(vram_gb=vram, device=self.config.device, dtype=self.config.dtype, quant=quant, policy=policy, **mode)

    def _after_load(self, engine) -> None:
        """CPU mode without --vram-gb: a simulated budget that caches part of the experts, so the
        panels show the cache at work."""
        if self.simulated and self.config.vram_gb is None:
            snap = engine.snapshot()
            all_experts = snap["num_layers"] * snap["num_experts"] * snap["expert_bytes"]
            engine.reconfigure(vram_gb=engine.min_vram_gb + SIMULATED_CACHE_SHARE * all_experts / GB)

    def start(self) -> None:
        """Begin loading the configured model in the background; a hub model is only used if it
        is already downloaded (the network is never touched at start)."""
        check = models.check(self.config.model, self.config.quant, psutil.virtual_memory().available, self.simulated)
        if check.hub_id or not check.loadable:
            level = "warn" if check.hub_id else "error"
            self.message = status_html(level, check.message + (" Press Load to download it." if check.hub_id else ""))
            return
        self.message = status_html("busy", f"Loading {check.choice}…")
        self.worker.load(str(check.folder), label=check.choice, after=self._after_load,
                         **self._load_kwargs(self.config.quant, self.config.policy))

    def _wait_with_progress(self, future, progress) -> None:
        while not future.done():
            stage, fraction = self.worker.progress or ("loading", 0.0)
            progress(fraction, desc=stage)
            time.sleep(0.1)

    def _loaded_outputs(self):
        snap = self.worker.last_snapshot
        if self.worker.engine is None or snap is None:
            error = self.worker.load_error
            self.message = status_html("error", error) if error else self.message
            return (self.message, gr.Slider(interactive=False), *panels(None), gr.skip(), gr.skip())
        slider = gr.Slider(interactive=True, **vram_range(snap, self.hw, self.simulated))
        sampling = self.worker.engine.sampling_defaults  # the model's generation_config.json, as Ollama does
        return (self.message, slider, *panels(snap), sampling["temperature"], sampling["top_p"])

    def _loaded_message(self, label: str, warning: str = "") -> str:
        warning = " ".join(w for w in (warning, self.worker.load_warning or "") if w)
        return status_html("warn" if warning else "ok", f"Loaded {label}." + (f" {warning}" if warning else ""))

    def page_load(self, progress=gr.Progress()):
        """Fill the page once the start-up load (if any) is done, showing its progress meanwhile."""
        was_loading = self.worker.loading
        if was_loading:
            self._wait_with_progress(was_loading, progress)
        self.worker.wait_loaded()
        if self.worker.engine is not None and (was_loading is not None or "mp-busy" in self.message):
            self.message = self._loaded_message(self.worker.model_label)
        return self._loaded_outputs()

    def validate(self, choice: str, quant: str) -> str:
        check = models.check(choice, quant, psutil.virtual_memory().available, self.simulated)
        return status_html(check.level, check.message)

    def _download(self, repo_id: str, progress):
        box: dict = {}

        def job():
            try:
                box["folder"] = models.download(repo_id, lambda stage, f: box.update(progress=(stage, f)))
            except Exception as exc:  # noqa: BLE001 - shown in the status line
                box["error"] = str(exc)

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        while thread.is_alive():
            stage, fraction = box.get("progress", (f"contacting huggingface.co for {repo_id}", 0.0))
            progress(fraction, desc=stage)
            thread.join(0.2)
        return box.get("folder"), box.get("error")

    def load_model(self, choice: str, quant: str, policy: str, progress=gr.Progress()):
        ram = psutil.virtual_memory().available
        check = models.check(choice, quant, ram, self.simulated)
        if check.hub_id:
            folder, error = self._download(check.hub_id, progress)
            if error:
                return (status_html("error", error), *(gr.skip(),) * 7)
            check = models.check_folder(folder, quant, ram, self.simulated, choice)
        if not check.loadable:  # the current model, if any, stays loaded
            return (status_html("error", check.message), *(gr.skip(),) * 7)
        future = self.worker.load(str(check.folder), label=choice, after=self._after_load,
                                  **self._load_kwargs(quant, policy))
        self._wait_with_progress(future, progress)
        self.worker.wait_loaded()
        if self.worker.engine is not None:
            self.message = self._loaded_message(choice, check.message if check.level == "warn" else "")
        else:
            self.message = status_html("error", f"Could not load {choice}: {self.worker.load_error}")
        return self._loaded_outputs()

    # ---- layout ----
    def _relayout(self, what: str, **kwargs):
        if self.worker.engine is None:
            return (status_html("error", "Load a model first."), *(gr.skip(),) * 4)
        start = time.perf_counter()
        try:
            snap = self.worker.reconfigure(**kwargs)
        except Exception as exc:  # noqa: BLE001 - BudgetError names the minimum; keep serving
            return (status_html("error", str(exc)), *(gr.skip(),) * 4)
        elapsed = time.perf_counter() - start
        slots = sum(layer["slots"] for layer in snap["layers"])
        cache = fmt_bytes(snap["budgets"]["cache_bytes"])
        self.message = status_html("ok", f"{what}: re-laid out in {elapsed:.2f} s without reloading: "
                                         f"{slots} cache slots, {cache} of expert cache.")
        return (self.message, *panels(snap))

    def set_vram(self, vram_gb: float):
        label = "(simulated) " if self.simulated else ""
        return self._relayout(f"VRAM budget {label}{float(vram_gb):g} GB", vram_gb=float(vram_gb))

    def set_policy(self, policy: str):
        return self._relayout(f"Policy {policy}", policy=policy)

    # ---- chat ----
    def chat(self, message, history, system: str, temperature: float, top_p: float, max_new_tokens: float):
        text = message_text(message).strip()
        if not text:
            raise gr.Error("Type a message first: an empty message cannot be answered.")
        if self.worker.engine is None:
            self.worker.wait_loaded()
        if self.worker.engine is None:
            raise gr.Error(f"No model is loaded. {self.worker.load_error or 'Pick one and press Load.'}")
        turns = [{"role": m["role"], "content": message_text(m.get("content"))} for m in (history or [])
                 if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        turns.append({"role": "user", "content": text})
        prompt = ([{"role": "system", "content": system.strip()}] if (system or "").strip() else []) + turns
        shown = turns + [{"role": "assistant", "content": ""}]
        yield ("", shown, *(gr.skip(),) * 4)
        options = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
        try:
            for delta, snap in self.worker.stream(prompt, **options):
                if not delta and snap is None:
                    yield (gr.skip(),) * 6
                    continue
                shown[-1]["content"] += delta
                yield (gr.skip(), shown, *(panels(snap) if snap is not None else (gr.skip(),) * 4))
        except Exception as exc:  # noqa: BLE001 - GenerationError, out of memory: shown, app keeps serving
            if "out of memory" in str(exc).lower():
                raise gr.Error(f"Out of memory while generating: lower the VRAM budget or use int4. ({exc})")
            raise gr.Error(str(exc) or type(exc).__name__)
