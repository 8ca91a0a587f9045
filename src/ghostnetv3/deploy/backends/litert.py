"""LiteRT (`.tflite`, format name `tflite`).

Export: `litert_torch.convert` -> `.tflite`. INT8: LiteRT's PT2E quantizer, static, per-channel
weights, with what its annotators miss after a non-strict export annotated by aten op, so that the
whole network runs in int8 (pt2e.py). Runner: `ai_edge_litert`'s interpreter (its default XNNPACK
delegate); a static INT8 file keeps int8 input and output tensors, which the runner quantizes and
dequantizes with the file's own scales. The file has a fixed input shape and a `<file>.json`
sidecar. litert-torch, ai-edge-litert and torchao are the optional `edge` extra.
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

__all__ = ["FORMAT", "SUFFIX", "FIXED_BATCH", "PACKAGES", "export", "export_int8", "load_runner", "read_metadata"]

FORMAT, SUFFIX, FIXED_BATCH = "tflite", ".tflite", True
PACKAGES = ("litert_torch", "ai_edge_litert", "torchao")
read_metadata = read_sidecar


def _write(program_model: nn.Module, example: torch.Tensor, path: Path, quantizer=None) -> None:
    litert_torch = require("litert_torch", "LiteRT export")
    kw = {}
    if quantizer is not None:
        from litert_torch.quantize.quant_config import QuantConfig  # lazy: optional extra (edge)
        kw["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    with warnings.catch_warnings(), quiet_output():  # the converter prints progress bars to fds 1, 2
        warnings.simplefilter("ignore")
        litert_torch.convert(program_model, (example,), **kw).export(str(path))


def export(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], batch_size: int = 1,
           meta: Optional[dict[str, Any]] = None) -> Path:
    """Write `model` (fused, eval mode) with the fixed input (batch_size, *input_size), and its sidecar."""
    return write_fp32(_write, FORMAT, model, path, input_size, batch_size, meta)


def export_int8(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], calib: Iterable[np.ndarray],
                batch_size: int = 1, per_channel: bool = True, observer: str = "histogram",
                meta: Optional[dict[str, Any]] = None) -> tuple[Path, dict[str, Any], nn.Module]:
    """(path, quantization info, the quantized PyTorch graph: what the file should compute)."""
    return write_pt2e_int8(_write, FORMAT, "litert_pt2e", model, path, input_size, calib, batch_size, per_channel,
                           observer, meta)


def load_runner(path: str | os.PathLike, threads: Optional[int] = None
                ) -> tuple[Callable[[np.ndarray], np.ndarray], Optional[int]]:
    """(float32 NCHW batch -> logits, the file's fixed batch size)."""
    litert = require("ai_edge_litert.interpreter", "Running a .tflite")
    with quiet_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interp = litert.Interpreter(model_path=str(path), num_threads=threads or None)
        interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    # LiteRT's static INT8 keeps int8 input/output tensors (what an app feeds on-device): the
    # float image is quantized with the file's own input scale, the logits dequantized.
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]

    def run_tflite(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if inp["dtype"] != np.float32:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / in_scale) + in_zero, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        return ((y.astype(np.float32) - out_zero) * out_scale) if out["dtype"] != np.float32 else y.copy()
    return run_tflite, sidecar_batch(path)
