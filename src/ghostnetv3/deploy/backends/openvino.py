"""OpenVINO IR (`.xml` + `.bin`) on the CPU plugin.

Export: `openvino.convert_model` -> `save_model` (fp32 as asked; the metadata also in the IR's
rt_info). INT8: NNCF post-training quantization. Runner: the CPU plugin in f32, latency hint, one
stream. Every compile, inference, calibration and release runs on OpenVINO's own thread
(openvino_thread.py: signals break otherwise). The file has a fixed input shape and a
`<file>.json` sidecar. openvino and nncf are the optional `edge` extra.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.backends.common import example_input, file_meta, sidecar_batch
from ghostnetv3.deploy.extras import require
from ghostnetv3.deploy.files import read_sidecar, write_sidecar
from ghostnetv3.deploy.openvino_thread import on_openvino_thread
from ghostnetv3.deploy.pt2e import calibration_chunks
from ghostnetv3.deploy.steps import quiet_output

__all__ = ["FORMAT", "SUFFIX", "FIXED_BATCH", "PACKAGES", "export", "export_int8", "load_runner", "read_metadata"]

FORMAT, SUFFIX, FIXED_BATCH = "openvino", ".xml", True
PACKAGES = ("openvino", "nncf")
read_metadata = read_sidecar


def _convert(model: nn.Module, example: torch.Tensor):
    ov = require("openvino", "OpenVINO export")
    with warnings.catch_warnings(), quiet_output():  # torch's "No CUDA runtime is found" on its first trace
        warnings.simplefilter("ignore")
        return ov.convert_model(model, example_input=example, input=[list(example.shape)])


def _save(ov_model, path: Path, meta: dict[str, Any]) -> None:
    ov = require("openvino", "OpenVINO export")
    ov_model.set_rt_info(json.dumps(meta), ["ghostnetv3"])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # fp32 as asked; fp16 is a separate choice
    write_sidecar(path, meta)


def _nncf_quantize(ov_model, calib: Iterable[np.ndarray], batch: int):
    """NNCF post-training quantization: its default preset (symmetric int8, per-channel weights)
    with the full bias correction instead of the fast one. On the demo's trained student (32 px,
    2,000 test images, fp32 75.75) the fast one dropped 1.75 points, the full one 0.65, the `mixed`
    preset 1.80 (docs/benchmarks.md)."""
    nncf = require("nncf", "OpenVINO INT8")
    items = list(calibration_chunks(calib, batch))
    if not items:
        raise ValueError("no calibration images were read; check --calib-data and --calib-size")
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), quiet_output():  # NNCF's progress
        q = on_openvino_thread(nncf.quantize, ov_model, nncf.Dataset(items), subset_size=len(items),
                               fast_bias_correction=False)
    return q, len(items) * batch


def export(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], batch_size: int = 1,
           meta: Optional[dict[str, Any]] = None) -> Path:
    """Write `model` (fused, eval mode) with the fixed input (batch_size, *input_size), and its sidecar."""
    path, example = example_input(path, input_size, batch_size)
    _save(_convert(model, example), path, file_meta(meta, FORMAT, example, int8=False))
    return path


def export_int8(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], calib: Iterable[np.ndarray],
                batch_size: int = 1, per_channel: bool = True, observer: str = "histogram",
                meta: Optional[dict[str, Any]] = None) -> tuple[Path, dict[str, Any], None]:
    """(path, quantization info, None: NNCF leaves no PyTorch graph to compare with)."""
    path, example = example_input(path, input_size, batch_size)
    q, n = _nncf_quantize(_convert(model, example), calib, batch_size)
    info = {"per_channel": per_channel, "observer": "nncf default, full bias correction", "quantizer": "nncf",
            "calib_images": n}
    _save(q, path, file_meta(meta, FORMAT, example, int8=True, info=info))
    return path, info, None


def load_runner(path: str | os.PathLike, threads: Optional[int] = None
                ) -> tuple[Callable[[np.ndarray], np.ndarray], Optional[int]]:
    """(float32 NCHW batch -> logits, the file's fixed batch size)."""
    ov = require("openvino", "Running OpenVINO IR")
    # f32 as exported: on CPUs with native bf16 (AVX512-BF16/AMX) the CPU plugin would otherwise run
    # in bf16 and differ from PyTorch by ~1e-4 on logits of ~1e-2 (what we verify is what we time)
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)

    def compile_model() -> dict:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        return {"model": compiled, "request": compiled.create_infer_request()}

    box = on_openvino_thread(compile_model)

    def infer(x: np.ndarray) -> np.ndarray:
        return box["request"].infer([x])[0].copy()

    def run_openvino(x: np.ndarray) -> np.ndarray:
        return on_openvino_thread(infer, np.ascontiguousarray(x, dtype=np.float32))

    # released on OpenVINO's thread too (see openvino_thread.py); at exit the process just ends
    weakref.finalize(run_openvino, on_openvino_thread, box.clear).atexit = False
    return run_openvino, sidecar_batch(path)
