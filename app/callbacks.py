"""Controller: the UI's event handlers. Each one validates, hands engine work to the EngineWorker, and
returns HTML/updates; errors become messages in the page, never a dead server.

The engine is shared by every browser tab; what a tab has seen (its status line, its replies' speed
and hit rates) lives in its own `Session` (a gr.State), which the handlers take and update.
"""
from __future__ import annotations

import html
import math
import threading
import time

import gradio as gr
import psutil
from moepic_core.runtime.snapshot import Snapshot

from app import models
from app.config import AppConfig, cpu_mode, default_vram_gb
from app.panels import fmt_bytes, heatmap_html, hitrate_chart_html, split_chart_html, stats_html
from app.problems import problem_text
from app.session import Session
from app.worker import EngineWorker
from moepic_core.units import GB

MB = 1e6
MODE_WORDS = {"simulated": " (CPU, simulated VRAM cache)", "in-place": " (CPU, experts computed in place in RAM)"}


def status_html(level: str, message: str) -> str:
    icon = {"ok": "✓", "warn": "⚠", "error": "✗", "busy": "…"}.get(level, "")
    return f'<div class="mp-status mp-{level}">{icon} {html.escape(message)}</div>'


def panels(snap: Snapshot | None, session: Session | None = None) -> tuple[str, str, str, str]:
    """(heatmap, split chart, hit-rate chart, stats) HTML: the engine's cache from `snap`, the hit-rate
    chart and the speed from this tab's `session`."""
    return heatmap_html(snap), split_chart_html(snap), hitrate_chart_html(session), stats_html(snap, session)


def message_text(content) -> str:
    """A Chatbot message's content as plain text: it arrives as a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return "" if content is None else str(content)


def vram_bounds(snap: Snapshot, hw: dict) -> tuple[float, float]:
    """(low, high) bytes of the VRAM slider: from the engine's minimum to the budget that caches every
    expert whole, and no further than the GPU's total VRAM (a simulated cache has no GPU to cap it)."""
    low = snap.budgets.min_vram_bytes
    high = low + 1.05 * snap.num_layers * snap.num_experts * snap.expert_bytes
    if not snap.budgets.simulated and hw.get("vram_total_bytes"):
        high = min(high, hw["vram_total_bytes"])
    return low, max(high, low)


def slider_unit(snap: Snapshot, hw: dict) -> tuple[float, str]:
    """(bytes per slider unit, its name): MB while the slider's whole range is below 1 GB, else GB."""
    return (MB, "MB") if vram_bounds(snap, hw)[1] < GB else (GB, "GB")


def vram_range(snap: Snapshot, hw: dict) -> dict:
    """gr.Slider settings in the slider's unit (`slider_unit`), between `vram_bounds`."""
    budgets = snap.budgets
    scale, unit = slider_unit(snap, hw)
    low, high = (b / scale for b in vram_bounds(snap, hw))
    step = 10 ** math.floor(math.log10(max(high - low, 1e-6) / 100))
    low = math.ceil(low / step - 1e-9) * step
    high = max(low + step, math.ceil(high / step) * step)
    value = budgets.vram_bytes / scale if budgets.vram_bytes else high
    digits = max(0, -math.floor(math.log10(step)))
    label = f"VRAM budget ({unit}" + (", simulated: CPU mode)" if budgets.simulated else ")")
    return dict(minimum=round(low, digits), maximum=round(high, digits), step=step,
                value=round(min(max(value, low), high), digits), label=label)


class Controller:
    def __init__(self, config: AppConfig, hw: dict, worker: EngineWorker | None = None):
        self.config, self.hw = config, hw
        self.worker = worker or EngineWorker()
        self.cpu = cpu_mode(hw, config.device)  # the model computes on the CPU (in place, or with a simulated cache)
        self.start_problem: tuple[str, str] | None = None  # (level, why) the start-up model was not loaded

    # ---- loading ----
    def _load_kwargs(self, quant: str, policy: str) -> dict:
        """Engine.load's options. On the CPU the engine's own rule picks the mode unless the config names
        one: the demo (or any model given --vram-gb) simulates a VRAM cache, to show the cache at work;
        a real model computes its experts in place (the fast CPU path, nothing to cache)."""
        vram = self.config.vram_gb or default_vram_gb(self.hw, self.config.device)
        return dict(vram_gb=vram, device=self.config.device, dtype=self.config.dtype, quant=quant, policy=policy,
                    cpu_mode=self.config.cpu_mode)

    def check(self, choice: str, quant: str) -> models.ModelCheck:
        return models.check(choice, quant, psutil.virtual_memory().available, self.cpu)

    def start(self) -> models.ModelCheck:
        """Begin loading the configured model in the background; a hub model is only used if it
        is already downloaded (the network is never touched at start). Returns the check."""
        check = self.check(self.config.model, self.config.quant)
        if check.hub_id or not check.loadable:
            self.start_problem = ("warn", f"{check.message} Press Load to download it.") if check.hub_id \
                else ("error", check.message)
            return check
        self.worker.load(str(check.folder), label=check.choice,
                         **self._load_kwargs(self.config.quant, self.config.policy))
        return check

    def _wait_with_progress(self, future, progress) -> None:
        while not future.done():
            stage, fraction = self.worker.progress or ("loading", 0.0)
            progress(fraction, desc=stage)
            time.sleep(0.1)

    def model_status(self) -> str:
        """The status line for the engine as it is now: loaded (with the quant decision), failed, or none."""
        w = self.worker
        if w.engine is not None:
            mode = MODE_WORDS.get(w.last_snapshot.mode if w.last_snapshot else None, "")
            fit = getattr(w.engine, "fit", None)
            text = " ".join(n for n in (f"{fit.message()}." if fit else "", w.load_warning or "") if n)
            tight = fit is not None and fit.level == "warn"
            return status_html("warn" if w.load_warning or tight else "ok", f"Loaded {w.model_label}{mode}. {text}")
        if w.load_error:
            return status_html("error", f"Could not load {w.model_label}: {w.load_error}")
        if self.start_problem:
            return status_html(*self.start_problem)
        return status_html("warn", "No model is loaded: pick one above and press Load.")

    def _loaded_outputs(self, session: Session):
        snap = self.worker.last_snapshot
        if self.worker.engine is None or snap is None:
            return (session.status, gr.Slider(interactive=False), *panels(None), gr.skip(), gr.skip(), session)
        if snap.budgets.in_place:
            slider = gr.Slider(interactive=False, label="VRAM budget: none (experts computed in place in RAM)")
        else:
            slider = gr.Slider(interactive=True, **vram_range(snap, self.hw))
        sampling = self.worker.engine.sampling_defaults  # the model's generation_config.json, as Ollama does
        return (session.status, slider, *panels(snap, session), sampling["temperature"], sampling["top_p"], session)

    def page_load(self, session: Session, progress=gr.Progress()):
        """Fill a new tab once the start-up load (if any) is done, showing its progress meanwhile."""
        loading = self.worker.loading
        if loading:
            self._wait_with_progress(loading, progress)
        self.worker.wait_loaded()
        session.status = session.status or self.model_status()
        return self._loaded_outputs(session)

    def validate(self, choice: str, quant: str) -> str:
        check = self.check(choice, quant)
        return status_html(check.level, check.message)

    def _download(self, repo_id: str, progress):
        box: dict = {}

        def job():
            try:
                box["folder"] = models.download(repo_id, lambda stage, f: box.update(progress=(stage, f)))
            except Exception as exc:  # noqa: BLE001 - shown in the status (a ModelLoadError as it is)
                box["error"] = problem_text(exc, f"downloading {repo_id}")

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        while thread.is_alive():
            stage, fraction = box.get("progress", (f"contacting huggingface.co for {repo_id}", 0.0))
            progress(fraction, desc=stage)
            thread.join(0.2)
        return box.get("folder"), box.get("error")

    def load_model(self, choice: str, quant: str, policy: str, session: Session, progress=gr.Progress()):
        skip = (gr.skip(),) * 7
        check = self.check(choice, quant)
        if check.hub_id and check.loadable:
            folder, error = self._download(check.hub_id, progress)
            if error:
                session.status = status_html("error", error)
                return (session.status, *skip, session)
            check = models.check_folder(folder, quant, psutil.virtual_memory().available, self.cpu, choice)
        if not check.loadable:  # the current model, if any, stays loaded
            session.status = status_html("error", check.message)
            return (session.status, *skip, session)
        future = self.worker.load(str(check.folder), label=choice,
                                  **self._load_kwargs(quant, policy))
        self._wait_with_progress(future, progress)
        self.worker.wait_loaded()
        session.status = self.model_status()
        return self._loaded_outputs(session)

    # ---- layout ----
    def _relayout(self, what: str, session: Session, **kwargs):
        if self.worker.engine is None:
            session.status = status_html("error", "No model is loaded: pick one above and press Load.")
            return (session.status, *(gr.skip(),) * 4, session)
        start = time.perf_counter()
        try:
            snap = self.worker.reconfigure(**kwargs)
        except Exception as exc:  # noqa: BLE001 - shown (a BudgetError names the minimum); keep serving
            session.status = status_html("error", problem_text(exc, f"re-laying out the cache ({what})"))
            return (session.status, *(gr.skip(),) * 4, session)
        elapsed = time.perf_counter() - start
        slots, cache = snap.slots, fmt_bytes(snap.budgets.cache_bytes)
        session.status = status_html("ok", f"{what}: re-laid out in {elapsed:.2f} s without reloading: "
                                           f"{slots} cache slots, {cache} of expert cache.")
        return (session.status, *panels(snap, session), session)

    def set_vram(self, value: float, session: Session):
        """The slider's value, in its unit (`slider_unit`: MB while its range is below 1 GB, else GB)."""
        snap = self.worker.last_snapshot
        scale, unit = slider_unit(snap, self.hw) if snap is not None else (GB, "GB")
        label = "(simulated) " if snap and snap.budgets.simulated else ""
        return self._relayout(f"VRAM budget {label}{float(value):g} {unit}", session, vram_gb=float(value) * scale / GB)

    def set_policy(self, policy: str, session: Session):
        return self._relayout(f"Policy {policy}", session, policy=policy)

    # ---- chat ----
    def chat(self, message, history, system: str, temperature: float, top_p: float, max_new_tokens: float,
             session: Session):
        """Stream the reply into the chat and this tab's panels. A user mistake (an empty message, no model)
        is answered in the page, never with a traceback."""
        text = message_text(message).strip()
        if not text:
            raise gr.Error("empty message: type something to send", print_exception=False)
        turns = [{"role": m["role"], "content": message_text(m.get("content"))} for m in (history or [])
                 if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        turns.append({"role": "user", "content": text})
        if self.worker.engine is None:
            self.worker.wait_loaded()
        if self.worker.engine is None:
            reason = self.worker.load_error or (self.start_problem or ("", ""))[1]
            note = "No model is loaded, so nothing can answer: pick one above and press Load." + (
                f" ({reason})" if reason else "")
            session.status = status_html("error", note)
            yield ("", turns + [{"role": "assistant", "content": f"⚠ {note}"}], *(gr.skip(),) * 4, session.status,
                   session)
            return
        prompt = ([{"role": "system", "content": system.strip()}] if (system or "").strip() else []) + turns
        shown = turns + [{"role": "assistant", "content": ""}]
        session.begin_reply(self.worker.last_snapshot)
        yield ("", shown, *(gr.skip(),) * 5, session)
        options = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
        try:
            for delta, snap in self.worker.stream(prompt, **options):
                if not delta and snap is None:
                    yield (gr.skip(),) * 7 + (session,)
                    continue
                shown[-1]["content"] += delta
                session.add(snap)
                yield (gr.skip(), shown, *(panels(snap, session) if snap is not None else (gr.skip(),) * 4),
                       gr.skip(), session)
        except Exception as exc:  # noqa: BLE001 - shown (GenerationError, OutOfMemoryError as they are); keep serving
            problem = problem_text(exc, "generating")
            session.status = status_html("error", problem)
            shown[-1]["content"] += f"\n\n⚠ {problem}"
            yield (gr.skip(), shown, *(gr.skip(),) * 4, session.status, session)
