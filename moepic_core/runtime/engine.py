"""Engine: load an MoE model with offloaded experts, lay out the cache, generate, report.

    engine = Engine.load("demo", cache_gb=0.01, device="cpu")
    for chunk in engine.stream_chat([{"role": "user", "content": "Good morrow"}]):
        print(chunk, end="")
    engine.snapshot()  # per-layer budgets, split ratios, cached experts, hits, bytes, prefetch accuracy
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import models
from ..budget import Budget, plan_budget
from ..cache.policies import AUTO
from ..config import EngineConfig
from ..errors import BudgetError, GenerationError, MoepicError, OutOfMemoryError
from ..fit import fit_quant
from ..fsutil import default_cache_dir
from ..layout import Layout, uniform_layout
from ..options import bad
from ..plan.trace import RoutingTrace, TraceRecorder
from ..units import GB
from . import native
from .generation import SamplingConfig, decode_tokens
from .kernels import pack_dense_linears, torch_workspace_bytes
from .loader import build_dense_model
from .offload import ExpertRuntime, OffloadedExperts
from .quant import TORCH_DTYPES, dtype_name
from .snapshot import Snapshot
from .store import ExpertStore
from .text import IncrementalDetokenizer, chat_input_ids
from .weights import CheckpointReader

log = logging.getLogger(__name__)
AUTO_FALLBACK = "lru"  # the policy "auto" runs where no solver chose one (a given split, all resident)


def out_of_memory(e: BaseException, doing: str, advice: str) -> OutOfMemoryError:
    """The user's error for torch's OutOfMemoryError (the device) or MemoryError (the host)."""
    where = "GPU" if isinstance(e, torch.OutOfMemoryError) else "host"
    return OutOfMemoryError(f"out of {where} memory while {doing}: {advice}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MoepicError("device 'cuda' was asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def default_dtype(config, device: torch.device) -> str:
    """CPU: bf16 for a bf16 checkpoint (half the bytes of fp32 for the kernels to read: measured
    1.9x faster per expert, benchmarks/kernels.py), else fp32. CUDA: the checkpoint's half type."""
    ckpt = str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", "") or "")
    if device.type == "cpu":
        return "bfloat16" if "bfloat16" in ckpt else "float32"
    return "bfloat16" if "bfloat16" in ckpt and torch.cuda.is_bf16_supported() else "float16"


def resolve_cpu_mode(cfg: EngineConfig, device: torch.device, folder=None) -> str:
    """"auto" made concrete: in place for a real model without a budget on the CPU, simulated for the
    demo (by name or folder) or when a budget is given; "gpu" on CUDA (see EngineConfig.cpu_mode)."""
    if device.type != "cpu":
        return "gpu"
    if cfg.cpu_mode != "auto":
        return cfg.cpu_mode
    demo = cfg.model == "demo" or (folder is not None and Path(folder).resolve() == models.DEMO_MODEL_DIR)
    simulate = demo or cfg.vram_gb is not None or cfg.cache_gb is not None
    return "simulated" if simulate else "in-place"


def in_place_mode(cfg: EngineConfig, device: torch.device) -> bool:
    return resolve_cpu_mode(cfg, device) == "in-place"


def needs_profile(policy: str, params: dict) -> bool:
    """Whether the static policy runs (alone or on some layer) without a profile: it takes the
    calibration trace's activation counts."""
    return "static" in (policy, *params.get("layers", ())) and "profile" not in params


_HARDWARE = {}


def detect_hardware(device: torch.device):
    """The hardware profile, measured once per process (bandwidth only on CUDA)."""
    if device.type not in _HARDWARE:
        from .hardware import detect

        _HARDWARE[device.type] = detect(measure=device.type == "cuda")
    return _HARDWARE[device.type]


class Engine:
    def __init__(self, cfg, folder, spec, adapter, model, tokenizer, runtime, device, dtype):
        self.cfg, self.folder, self.spec, self.adapter = cfg, folder, spec, adapter
        self.model, self.tokenizer, self.runtime = model, tokenizer, runtime
        self.device, self.dtype = device, dtype
        self.lock = threading.RLock()  # one forward step or one re-layout at a time
        self.budget: Budget | None = None
        self._trace = None  # the calibration routing trace, once a layout or a policy needed it (`calibrate`)

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, *, progress=None, **options) -> "Engine":
        """Load `model` (folder, "demo" or downloaded hub id); options are EngineConfig's fields."""
        try:
            return cls._load(model, progress, options)
        except (torch.OutOfMemoryError, MemoryError) as e:
            raise out_of_memory(e, "loading the model", "choose a smaller VRAM budget, or int4") from e

    @classmethod
    def _load(cls, model: str, progress, options: dict) -> "Engine":
        cfg = EngineConfig(model=str(model), **options)
        folder = models.resolve_model(cfg.model)
        config = models.load_config(folder)
        adapter = models.get_adapter(config)
        reader = CheckpointReader(folder)
        spec = models.checkpoint_spec(adapter, folder.name, reader.shapes())
        device = resolve_device(cfg.device)
        if device.type == "cpu":
            cfg = dataclasses.replace(cfg, cpu_mode=resolve_cpu_mode(cfg, device, folder))
        dtype = cfg.dtype or default_dtype(config, device)
        fit = fit_quant(spec, cfg.quant, dtype=dtype, cpu=device.type == "cpu",
                        cache_dir=cfg.cache_dir or default_cache_dir())  # "auto" -> the best that fits
        cfg = dataclasses.replace(cfg, quant=fit.quant)
        cls._budget(cfg, spec, dtype, device)  # fail before the slow part (the budget is re-planned once loaded)
        tokenizer = cls._load_tokenizer(folder)
        store = ExpertStore.open(reader, adapter, spec, quant=cfg.quant, dtype=dtype, cache_dir=cfg.cache_dir,
                                 pin=device.type == "cuda", progress=progress)
        if progress:
            progress("loading dense weights", 0.0)
        model_ = build_dense_model(config, adapter, reader, TORCH_DTYPES[dtype], device)
        model_.generation_config = cls._load_generation_config(folder, model_.generation_config)
        routers = [adapter.router(model_, layer) for layer in spec.moe_layers]
        runtime = ExpertRuntime(store, routers, device, TORCH_DTYPES[dtype],
                                policy=AUTO_FALLBACK if cfg.policy == AUTO else cfg.policy,
                                policy_params=cfg.policy_params, prefetch=cfg.prefetch,
                                prefetch_extra=cfg.prefetch_extra, activation=adapter.activation(model_),
                                in_place=in_place_mode(cfg, device))
        for pos, layer in enumerate(spec.moe_layers):
            adapter.moe_block(model_, layer).experts = OffloadedExperts(runtime, pos)
        cls._pack_dense(model_, cfg, dtype, device, routers)
        engine = cls(cfg, folder, spec, adapter, model_, tokenizer, runtime, device, dtype)
        engine.fit = fit  # the quant decision with its numbers, for the CLI and the app to show
        budget = cls._budget(cfg, spec, dtype, device)
        engine._calibrate_for(cfg, budget)
        engine._apply(cfg, budget, fresh_policy=True)
        if progress:
            progress("ready", 1.0)
        return engine

    @staticmethod
    def _pack_dense(model, cfg: EngineConfig, dtype: str, device: torch.device, routers) -> None:
        """On the CPU, run the dense linears through the native kernels (quantized like the experts
        unless `dense_quant` says otherwise); float32 stays in torch (exact, and only the tiny models
        use it). llama.cpp quantizes the dense part too; benchmarks/peer_llamacpp.py measures both."""
        quant = cfg.dense_quant if cfg.dense_quant is not None else cfg.quant
        if device.type != "cpu" or native.library() is None or (quant == "none" and dtype == "float32"):
            return
        skip = [m for router in routers for m in router.modules()]
        model.moepic_dense_bytes = pack_dense_linears(model, quant, dtype, skip=skip)

    @staticmethod
    def _load_generation_config(folder, fallback):
        """The folder's generation_config.json (eos ids, recommended sampling), else `fallback`."""
        from transformers import GenerationConfig

        if not (folder / "generation_config.json").is_file():
            return fallback
        try:
            return GenerationConfig.from_pretrained(folder)
        except (OSError, ValueError) as e:
            log.warning("ignoring %s/generation_config.json: %s", folder, e)
            return fallback

    @property
    def sampling_defaults(self) -> dict:
        """The model's recommended sampling from its generation_config.json; temperature 0 = greedy."""
        gen = self.model.generation_config
        if not getattr(gen, "do_sample", False):
            return {"temperature": 0.0, "top_p": 1.0}
        return {"temperature": float(gen.temperature or 1.0), "top_p": float(gen.top_p or 1.0)}

    @staticmethod
    def _load_tokenizer(folder):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - a model without a usable tokenizer still runs on ids
            log.warning("no tokenizer in %s (%s); only token ids can be generated", folder, e)
            return None

    # --- budget and layout --------------------------------------------------------------------
    @staticmethod
    def _budget(cfg: EngineConfig, spec, dtype: str, device: torch.device) -> Budget:
        in_place = in_place_mode(cfg, device)
        simulated = device.type == "cpu" and not in_place
        free = None
        if cfg.cache_gb is None and cfg.vram_gb is None and device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        extra = torch_workspace_bytes(spec.hidden_size, cfg.quant, 512) if device.type == "cuda" else 0
        return plan_budget(spec, quant=cfg.quant, dtype=dtype, max_context=cfg.max_context,
                           prefetch_extra=cfg.prefetch_extra, simulated=simulated, free_bytes=free,
                           in_place=in_place, extra_workspace=extra,  # the torch expert kernel's temporaries
                           vram_bytes=None if cfg.vram_gb is None else int(cfg.vram_gb * GB),
                           cache_bytes=None if cfg.cache_gb is None else int(cfg.cache_gb * GB))

    def _uniform(self, cfg: EngineConfig, budget: Budget, ratio: float) -> Layout:
        spec = self.spec
        return uniform_layout(budget.cache_bytes, spec.num_moe_layers, ratio, spec.intermediate_size,
                              spec.row_bytes(cfg.quant, self.dtype), spec.num_experts)

    def _layout(self, cfg: EngineConfig, budget: Budget) -> Layout:
        """The solver's layout when no split is given (trivial budgets need no solver), else uniform. The
        solver reads the calibration trace: `_calibrate_for` made it before (this never decodes)."""
        store = self.spec.store_bytes(cfg.quant, self.dtype)
        if budget.in_place:
            layout = self._uniform(cfg, budget, 1.0)
            layout.source = "in-place"
            return layout
        if cfg.split not in (None, "auto"):
            return self._uniform(cfg, budget, float(cfg.split))
        hw = detect_hardware(self.device)
        cpu_gbps = self._cpu_gbps(cfg)
        if not self._solver_runs(cfg, budget):
            layout = self._uniform(cfg, budget, 1.0)
            layout.source = "all-resident" if budget.cache_bytes >= store else "no-cache"
            if budget.cache_bytes <= 0 and cpu_gbps > hw.bandwidth_gbps:  # no cache: misses where they are fastest
                layout.layers = [dataclasses.replace(p, miss_on="cpu") for p in layout.layers]
            return layout
        from ..plan.planning import solve_layout

        layout = solve_layout(self.spec, budget.cache_bytes, bandwidth_gbps=hw.bandwidth_gbps, cpu_gbps=cpu_gbps,
                              trace=self._calibrated(), policy=cfg.policy, quant=cfg.quant, dtype=self.dtype,
                              policy_params=cfg.policy_params or None,
                              prefetch_accuracy=None if cfg.prefetch else 0.0)
        layout.prediction.update(bandwidth_source=hw.bandwidth_source, cpu_gbps=cpu_gbps,
                                 cpu_source="measured (this machine, this model's shapes)" if cpu_gbps else "off")
        return layout

    def _cpu_gbps(self, cfg: EngineConfig) -> float:
        """The CPU path's throughput for the solver: measured with the real kernels for this model's
        shapes on CUDA (kept per machine, cpu_speed.py); 0 on a CPU-only machine, where the CPU is the
        device too and a CPU worker would only compete with it."""
        if self.device.type != "cuda" or not self.runtime.kernel.activation.native:
            return 0.0
        from .cpu_speed import measure_cpu_gbps

        return measure_cpu_gbps(self.spec.hidden_size, self.spec.intermediate_size, cfg.quant, self.dtype)

    def _solver_runs(self, cfg: EngineConfig, budget: Budget) -> bool:
        """Whether `_layout` asks the solver: no split given and a cache between nothing and everything."""
        store = self.spec.store_bytes(cfg.quant, self.dtype)
        return not budget.in_place and cfg.split in (None, "auto") and 0 < budget.cache_bytes < store

    def _calibrate_for(self, cfg: EngineConfig, budget: Budget) -> bool:
        """The calibration step of `load` and `reconfigure`: calibrate now when `cfg` needs the trace
        (the solver lays the cache out, or a static policy needs its profile) and there is none yet.
        Returns whether it did (the policy's state then starts afresh: calibration decoded through it)."""
        needed = self._solver_runs(cfg, budget) or needs_profile(cfg.policy, cfg.policy_params)
        if self._trace is not None or not needed:
            return False
        self.calibrate(budget)
        return True

    def calibrate(self, budget: Budget | None = None):
        """The calibration routing trace (calibrate.py): shipped beside the model, saved for its store, or
        else recorded now by decoding the built-in prompts on a uniform whole-expert layout of `budget`
        (default: the engine's), counted apart (the engine's counters are not touched). Made once."""
        if self._trace is None:
            from .calibrate import calibration_trace

            with self.lock, self.runtime.separate_stats():
                self.runtime.configure(self._uniform(self.cfg, budget or self.budget, 1.0))
                self._trace = calibration_trace(self)
        return self._trace

    def _calibrated(self):
        """The calibration trace `_calibrate_for` made; a layout never decodes to get one."""
        if self._trace is None:
            raise RuntimeError("no calibration trace: Engine._calibrate_for must run before this layout")
        return self._trace

    def _policy(self, cfg: EngineConfig, layout: Layout) -> tuple[str, dict]:
        """The policy the directory runs: the layout's (per layer when the solver mixed them), else
        the configured one ("auto" without a solved layout: lru)."""
        name, params = layout.policy(AUTO_FALLBACK if cfg.policy == AUTO else cfg.policy)
        params = {**cfg.policy_params, **params}
        if needs_profile(name, params):
            params["profile"] = self._calibrated().counts().tolist()
        return name, params

    def _apply(self, cfg: EngineConfig, budget: Budget, fresh_policy: bool) -> None:
        """Layout and pools for `cfg` within `budget`; a fresh policy state when asked or when the
        layout's policy differs from the running one."""
        layout = self._layout(cfg, budget)
        policy = self._policy(cfg, layout)
        fresh_policy = fresh_policy or policy != (self.runtime.policy_name, self.runtime.policy_params)
        with self.lock:
            self.runtime.configure(layout, *(policy if fresh_policy else ()))
            self.cfg, self.budget = cfg, budget

    def reconfigure(self, *, vram_gb=None, cache_gb=None, policy=None, split=None, policy_params=None) -> dict:
        """Re-solve and re-lay out the pools for a new budget, policy or split without reloading the
        model; returns the new layout. `split="auto"` goes back to the solver's layout."""
        if self.budget.in_place and (vram_gb, cache_gb, split) != (None, None, None):
            raise BudgetError("this engine computes every expert in place in RAM (no cache to size or split); "
                              "load it with cpu_mode='simulated' (--cpu-mode simulated) to simulate a VRAM cache", 0)
        changes = {}
        if vram_gb is not None:
            changes.update(vram_gb=vram_gb, cache_gb=None)
        if cache_gb is not None:
            changes["cache_gb"] = cache_gb
        if split is not None:
            changes["split"] = None if split == "auto" else split
        if policy is not None:
            changes["policy"] = policy
        if policy_params is not None:
            changes["policy_params"] = policy_params
        cfg = dataclasses.replace(self.cfg, **changes)
        budget = self._budget(cfg, self.spec, self.dtype, self.device)
        calibrated = self._calibrate_for(cfg, budget)
        try:
            self._apply(cfg, budget, fresh_policy=calibrated or (cfg.policy, cfg.policy_params) != (
                self.cfg.policy, self.cfg.policy_params))
        except (torch.OutOfMemoryError, MemoryError) as e:
            self._recover()  # the pools of the layout that fit before
            raise out_of_memory(e, "re-laying out the cache", "the previous budget stays; choose a smaller one") from e
        return self.runtime.layout.to_dict()

    @property
    def kernels(self) -> str:
        """Which expert kernels run, in words."""
        if self.runtime.kernel.native:
            return native.describe()
        return "torch" + (f" on {self.device.type}" if self.device.type != "cpu" else f" ({native.describe()})")

    @property
    def min_vram_gb(self) -> float:
        return self.budget.min_vram_bytes / GB

    # --- generation ---------------------------------------------------------------------------
    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None)
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def ends_reply(self, token: int) -> bool:
        """Whether `token` is one that ends a reply (generation stops after it)."""
        return token in self._eos_ids()

    def tokens(self, input_ids, max_new_tokens: int = 128, *, do_sample: bool = False, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop_event=None,
               stop_at_eos: bool = True, min_new_tokens: int | None = None) -> Iterator[int]:
        """Yield new token ids one by one. `min_new_tokens` (default: the model's generation_config, as
        transformers' generate reads it): no end of reply before that many tokens."""
        ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(self.device)
        if ids.numel() == 0:
            raise GenerationError("empty prompt: nothing to continue")
        if max_new_tokens < 1:
            raise bad("max_new_tokens", max_new_tokens)
        if min_new_tokens is None:
            min_new_tokens = getattr(self.model.generation_config, "min_new_tokens", None) or 0
        cfg = SamplingConfig(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                             min_new_tokens=min_new_tokens)
        eos = self._eos_ids() if stop_at_eos else set()
        steps = decode_tokens(self.model, ids, max_new_tokens, cfg, eos, stop_event, self.runtime.stats.end_token)
        while True:
            try:
                with self.lock:
                    token = next(steps)
            except StopIteration:
                return
            except (torch.OutOfMemoryError, MemoryError) as e:
                self._recover()
                raise out_of_memory(e, "generating", "lower the VRAM budget, use int4 or shorten the "
                                    "conversation, and try again") from e
            except BaseException:
                self._recover()
                raise
            yield token

    def _recover(self) -> None:
        """After a failed step: drop staged data and reload the pools from the directory."""
        with self.lock:
            self.runtime.configure(self.runtime.layout)  # keeps the policy, reloads every cached expert
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def generate(self, input_ids, max_new_tokens: int = 128, do_sample: bool = False, **kwargs) -> list[int]:
        """The new token ids (not the prompt)."""
        return list(self.tokens(input_ids, max_new_tokens, do_sample=do_sample, **kwargs))

    def stream(self, input_ids, max_new_tokens: int = 128, **kwargs) -> Iterator[str]:
        """Text chunks of the continuation of `input_ids`."""
        self._need_tokenizer()
        detok = IncrementalDetokenizer(self.tokenizer)
        for token in self.tokens(input_ids, max_new_tokens, **kwargs):
            chunk = detok.add(token)
            if chunk:
                yield chunk
        tail = detok.flush()
        if tail:
            yield tail

    def stream_chat(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                    top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop_event=None) -> Iterator[str]:
        """Text chunks of the assistant's reply to `messages`, via the model's chat template."""
        self._need_tokenizer()
        ids = chat_input_ids(self.tokenizer, messages)
        yield from self.stream(ids, max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0,
                               top_p=top_p, top_k=top_k, seed=seed, stop_event=stop_event)

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise GenerationError(f"{self.folder} has no tokenizer: only token ids can be generated")

    # --- traces and stats ---------------------------------------------------------------------
    def start_trace(self) -> None:
        """Record every decode step's routing (and the prefetcher's guesses) from now on."""
        spec = self.spec
        self.runtime.recorder = TraceRecorder(spec.num_moe_layers, spec.top_k, self.runtime.prefetcher.width,
                                              spec.num_experts, spec.name)

    def stop_trace(self) -> RoutingTrace:
        """The decode steps recorded since `start_trace` as a RoutingTrace."""
        recorder, self.runtime.recorder = self.runtime.recorder, None
        if recorder is None:
            raise RuntimeError("stop_trace without start_trace")
        return recorder.trace()

    def reset_stats(self) -> None:
        """Start the counters and the per-token history afresh (the app and the CLIs never do it)."""
        self.runtime.stats.reset()

    def snapshot(self) -> Snapshot:
        """A typed picture of the cache, the layout and the counters (`.to_json()` for JSON)."""
        with self.lock:
            return Snapshot.of(self)

    @property
    def mode(self) -> str:
        """"gpu", "simulated" or "in-place"."""
        return resolve_cpu_mode(self.cfg, self.device)

    def policy_label(self) -> str:
        """The policy running, e.g. "lru", "auto: lcp-filtered" or "auto: per layer (lru x20, reuse x12)"."""
        names = [p.policy or self.runtime.policy_name for p in self.runtime.layout.layers]
        counts = {n: names.count(n) for n in dict.fromkeys(names)}
        running = names[0] if len(counts) == 1 else "per layer (" + ", ".join(f"{n} x{c}" for n, c in counts.items()) + ")"
        return f"auto: {running}" if self.cfg.policy == AUTO else running

    def close(self) -> None:
        self.runtime.close()
        self.runtime.pool = None
        self.model = None


__all__ = ["Engine", "dtype_name"]
