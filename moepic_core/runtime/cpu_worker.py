"""CpuWorker: expert segments computed on the CPU, from the host store, while the device computes
the rest (hybrid execution: layout.LayerPlan's `bottom_on` / `miss_on` = "cpu").

    worker = CpuWorker(kernel)                  # kernel: an ExpertKernel on the CPU
    job = worker.submit(x_host, store_rows)     # x [T, H] on the host; rows of one segment
    y = job.result()                            # [T, H] fp32 on the host

Only the hidden vector goes to the CPU and only the result comes back ([T, H] each: 16 KB for
Mixtral at batch 1), never the weights. One worker thread: the native kernels run their own
threads inside one call and release the GIL, so the device side keeps issuing work meanwhile. On
a CPU-only machine the "device" is the CPU too and the same code runs (tests cover it there).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .kernels import ExpertKernel


class CpuWorker:
    def __init__(self, kernel: ExpertKernel, threads: int | None = None):
        if kernel.device.type != "cpu":
            raise ValueError("the CPU worker needs a CPU kernel")
        self.kernel = kernel
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moepic-cpu")

    def submit(self, x: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None = None) -> Future:
        """Compute the segment `rows` (host memory) for `x` (host, any float dtype) in the background;
        `bias`: the segment neurons' gate/up biases, or None."""
        return self._pool.submit(self._run, x, rows, bias)

    def _run(self, x: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.kernel.segment(x, rows, bias)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
