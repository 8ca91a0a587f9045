"""Export a fused model (ONNX, TorchScript, or an on-device format: ExecuTorch, LiteRT, OpenVINO;
one file each in backends/), then prove the file computes what PyTorch does, in its own runtime
(runner.py).

What the model expects (image size, channels, normalization, classes) is written into the file
(ONNX metadata_props, a TorchScript extra file, a `<file>.json` beside an on-device file), so
`quantize` and `bench` can read it back (contract.py). Files are written under a temporary name and
moved into place only after the check passed: a failed export leaves nothing behind (files.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.backends import EDGE_FORMATS, FORMATS, backend_for
from ghostnetv3.deploy.backends import onnx as onnx_backend
from ghostnetv3.deploy.backends import torchscript as torchscript_backend
from ghostnetv3.deploy.backends.onnx import onnx_session
from ghostnetv3.deploy.contract import META_KEY, export_metadata, read_metadata
from ghostnetv3.deploy.files import commit_files, discard_files, file_size, output_files, temporary_name
from ghostnetv3.deploy.prepare import to_deploy_form
from ghostnetv3.deploy.runner import open_runner
from ghostnetv3.deploy.steps import made_folders, sigterm_interrupts, step
from ghostnetv3.errors import UserError
from ghostnetv3.paths import check_writable

__all__ = ["export_model", "export_onnx", "export_torchscript", "verify_export", "read_metadata",
           "onnx_session", "ExportMismatchError", "META_KEY", "FORMATS"]


class ExportMismatchError(UserError):
    """The exported file's outputs differ from PyTorch's by more than the tolerance."""

    def __init__(self, message: str, max_diff: float):
        super().__init__(message)
        self.max_diff = max_diff


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int],
                dynamic_batch: bool = False, opset: int = 17, cfg: Optional[dict] = None) -> Path:
    """backends.onnx.export, carrying `cfg`'s description and input contract."""
    return onnx_backend.export(model, path, input_size, dynamic_batch=dynamic_batch, opset=opset,
                               meta=export_metadata(cfg))


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int],
                       cfg: Optional[dict] = None) -> Path:
    """backends.torchscript.export, carrying `cfg`'s description and input contract."""
    return torchscript_backend.export(model, path, input_size, meta=export_metadata(cfg))


def verify_export(model: nn.Module, path: str | os.PathLike, fmt: str, input_size: Sequence[int],
                  batch_sizes: Sequence[int] = (1,), seed: int = 0) -> float:
    """Max |exported - PyTorch| over random normal inputs of each batch size."""
    run = open_runner(Path(path), fmt)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, *input_size, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        out = run(x.numpy())
        if out.shape != ref.shape:
            raise ExportMismatchError(f"exported output shape {out.shape} != PyTorch {ref.shape} "
                                      f"at batch {b}", float("inf"))
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def _check_request(fmt: str, output: Path, dynamic_batch: bool, batch_size: int,
                   input_size: Sequence[int]) -> tuple[int, ...]:
    """Every refusal that needs no work, before any: the format, its flags, the input size and
    the destination."""
    backend_for(fmt)  # an unknown format: one line naming the known ones
    if fmt in EDGE_FORMATS and dynamic_batch:
        raise ValueError(f"--dynamic-batch is for onnx; a {fmt} file has a fixed batch (--batch-size)")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {batch_size})")
    size = tuple(int(s) for s in input_size)
    if len(size) != 3:
        raise ValueError(f"input size is C H W, got {size}")
    if fmt in EDGE_FORMATS and output.suffix != EDGE_FORMATS[fmt]:
        raise ValueError(f"--output {output}: {fmt} files end in {EDGE_FORMATS[fmt]}")
    check_writable(output)
    return size


def _write_and_verify(fused: nn.Module, tmp: Path, fmt: str, input_size: tuple[int, ...], dynamic_batch: bool,
                      opset: int, cfg: dict, batch_size: int, log: Callable[[str], None]
                      ) -> tuple[float, tuple[int, ...]]:
    """Export to `tmp`, then run it in its runtime: (max |diff| to PyTorch, batch sizes checked)."""
    with step(log, f"writing {fmt}"):
        if fmt == "onnx":
            export_onnx(fused, tmp, input_size, dynamic_batch=dynamic_batch, opset=opset, cfg=cfg)
        elif fmt == "torchscript":
            export_torchscript(fused, tmp, input_size, cfg=cfg)
        else:
            backend_for(fmt).export(fused, tmp, input_size, batch_size, meta=export_metadata(cfg))
    if fmt in EDGE_FORMATS:
        batch_sizes: tuple[int, ...] = (batch_size,)
    else:  # a traced module runs at any batch size, so check batch 3 as well
        batch_sizes = (1, 3) if dynamic_batch or fmt == "torchscript" else (1,)
    with step(log, f"checking the {fmt} file against PyTorch in its runtime"):
        return verify_export(fused, tmp, fmt, input_size, batch_sizes), batch_sizes


def export_model(model: nn.Module, output: str | os.PathLike, fmt: str = "onnx",
                 input_size: Sequence[int] = (3, 224, 224), dynamic_batch: bool = False,
                 opset: int = 17, tolerance: float = 1e-4, cfg: Optional[dict] = None,
                 log: Callable[[str], None] = print, batch_size: int = 1) -> dict[str, Any]:
    """Fuse (if needed), export, verify. Raises ExportMismatchError beyond `tolerance`, and then
    `output` is not written (nor any folder made for it; a SIGTERM leaves nothing either). On-device
    formats have the fixed batch `batch_size`. The file carries `cfg`'s description and the input
    contract at `input_size` (contract.py).

    Returns a report: output, format, max_diff, batch_sizes checked, fusion info.
    """
    final = Path(output)
    input_size = _check_request(fmt, final, dynamic_batch, batch_size, input_size)
    c, h, w = input_size
    cfg = {**(cfg or {}), "in_chans": c, "img_size": h if h == w else [h, w]}
    sample = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(1))
    fused, info = to_deploy_form(model, sample, log=log)
    if info["fusion_max_diff"] is not None and not info["fusion_max_diff"] <= tolerance:
        log(f"warning: the fused model differs from the unfused one by {info['fusion_max_diff']:.3g} "
            f"(> {tolerance:g}); the export is checked against the fused model")
    tmp = temporary_name(final)
    with sigterm_interrupts(), made_folders(final.parent):
        try:
            diff, batch_sizes = _write_and_verify(fused, tmp, fmt, input_size, dynamic_batch, opset, cfg,
                                                  batch_size, log)
            if not diff <= tolerance:  # NaN fails too
                raise ExportMismatchError(f"{fmt} output differs from PyTorch: max |diff| = {diff:.3g} > "
                                          f"tolerance {tolerance:g} (nothing written to {final})", diff)
            size = file_size(tmp, fmt)
            commit_files(tmp, final, fmt)
        finally:
            discard_files(tmp, fmt)  # whatever a failed step left
    report = {"output": str(final), "format": fmt, "input_size": list(input_size),
              "dynamic_batch": bool(dynamic_batch or fmt == "torchscript"),
              "max_diff": diff, "tolerance": tolerance, "batch_sizes_checked": list(batch_sizes),
              "size_bytes": size, **{f"fusion_{k}" if not k.startswith("fusion") else k: v
                                     for k, v in info.items()}}
    if fmt in EDGE_FORMATS:
        report["files"] = [str(f) for f in output_files(final, fmt)]
    return report
