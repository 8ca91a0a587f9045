"""ExecuTorch with the XNNPACK delegate (`.pte`).

Export: `torch.export` -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` ->
`.pte`. INT8: XNNPACK's PT2E quantizer (symmetric int8, per-channel weights), calibrated on real
images, then lowered the same way (pt2e.py). Runner: `executorch.runtime`, whose XNNPACK
threadpool is process-wide (`set_executorch_threads`). The file has a fixed input shape and a
`<file>.json` sidecar. ExecuTorch and torchao are the optional `edge` extra.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.backends.common import sidecar_batch, write_fp32, write_pt2e_int8
from ghostnetv3.deploy.extras import require
from ghostnetv3.deploy.files import read_sidecar
from ghostnetv3.deploy.steps import quiet_output

__all__ = ["FORMAT", "SUFFIX", "FIXED_BATCH", "PACKAGES", "export", "export_int8", "load_runner",
           "read_metadata", "set_executorch_threads"]

FORMAT, SUFFIX, FIXED_BATCH = "executorch", ".pte", True
PACKAGES = ("executorch", "torchao")
read_metadata = read_sidecar


def _write(program_model: nn.Module, example: torch.Tensor, path: Path, quantizer=None) -> None:
    # XNNPACK lowers the PT2E graph as it is: the quantizer is not needed again
    require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")  # silenced import
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (  # lazy: optional extra (edge)
        XnnpackPartitioner)
    from executorch.exir import to_edge_transform_and_lower  # lazy: optional extra (edge)
    with warnings.catch_warnings(), quiet_output():  # its lowering logs (torch's cpp_extension notice, ...)
        warnings.simplefilter("ignore")
        ep = torch.export.export(program_model, (example,))
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)


def export(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], batch_size: int = 1,
           meta: Optional[dict[str, Any]] = None) -> Path:
    """Write `model` (fused, eval mode) with the fixed input (batch_size, *input_size), and its sidecar."""
    return write_fp32(_write, FORMAT, model, path, input_size, batch_size, meta)


def export_int8(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], calib: Iterable[np.ndarray],
                batch_size: int = 1, per_channel: bool = True, observer: str = "histogram",
                meta: Optional[dict[str, Any]] = None) -> tuple[Path, dict[str, Any], nn.Module]:
    """(path, quantization info, the quantized PyTorch graph: what the file should compute)."""
    return write_pt2e_int8(_write, FORMAT, "xnnpack_pt2e", model, path, input_size, calib, batch_size, per_channel,
                           observer, meta)


def set_executorch_threads(threads: Optional[int]) -> None:
    """ExecuTorch's XNNPACK threadpool is process-wide; size it like the other backends."""
    if threads:
        lib = require("executorch.extension.pybindings.portable_lib", "ExecuTorch")
        with quiet_output():  # cpuinfo probes and "Resetting threadpool to N threads", on every call
            lib._unsafe_reset_threadpool(int(threads))


def load_runner(path: str | os.PathLike, threads: Optional[int] = None
                ) -> tuple[Callable[[np.ndarray], np.ndarray], Optional[int]]:
    """(float32 NCHW batch -> logits, the file's fixed batch size)."""
    runtime = require("executorch.runtime", "Running a .pte")
    set_executorch_threads(threads)
    with quiet_output():  # the runtime's cpuinfo probes
        method = runtime.Runtime.get().load_program(str(path)).load_method("forward")
    return (lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()), sidecar_batch(path)
