"""Export a fused model (ONNX, TorchScript, or an on-device format: ExecuTorch, LiteRT, OpenVINO;
see `edge.py`), then prove the file computes what PyTorch does, in its own runtime.

ONNX goes through the TorchScript-based exporter (`dynamo=False`): on torch 2.14 it is exact
(~1e-8 on GhostNetV3), takes ~1 s instead of ~15 s, and writes the requested opset directly,
where the dynamo exporter only emits opset >= 18 and fails to down-convert. The dynamo exporter
stays as a fallback for models the tracer cannot handle.

What the model expects (image size, channels, normalization, classes) is written into the file
(ONNX metadata_props, a TorchScript extra file, a `<file>.json` beside an on-device file), so
`quantize` and `bench` can read it back. Files are written under a temporary name and moved into
place only after the check passed: a failed export leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.contract import META_KEY, input_contract, read_metadata
from ghostnetv3.deploy.edge import (EDGE_FORMATS, commit_files, discard_files, edge_runner, export_edge,
                                    file_size)
from ghostnetv3.deploy.prepare import to_deploy_form
from ghostnetv3.deploy.steps import made_folders, quiet_output, sigterm_interrupts, step
from ghostnetv3.errors import UserError
from ghostnetv3.paths import check_writable

__all__ = ["export_model", "export_onnx", "export_torchscript", "verify_export", "read_metadata",
           "onnx_session", "ExportMismatchError", "META_KEY", "FORMATS"]

_META_FIELDS = ("model", "num_classes", "in_chans", "img_size", "mean", "std", "data", "seed",
                "val_fraction", "eval_crop_pct", "interpolation", "weights", "source", "classes",
                "stem_stride", "output_stride")


FORMATS = ("onnx", "torchscript", *EDGE_FORMATS)


class ExportMismatchError(UserError):
    """The exported file's outputs differ from PyTorch's by more than the tolerance."""

    def __init__(self, message: str, max_diff: float):
        super().__init__(message)
        self.max_diff = max_diff


def _metadata(cfg: Optional[dict]) -> dict[str, Any]:
    """What an exported file carries: the run's description and, once channels and size are
    known, the full input contract (contract.py; unset transform keys as the data layer's defaults)."""
    cfg = cfg or {}
    meta = {k: (list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k])
            for k in _META_FIELDS if cfg.get(k) is not None}
    if cfg.get("in_chans") and cfg.get("img_size"):
        meta.update(input_contract(cfg))
    return meta


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int],
                dynamic_batch: bool = False, opset: int = 17, cfg: Optional[dict] = None) -> Path:
    import onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, *input_size)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), quiet_output():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice is not the user's
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"], dynamic_axes=axes,
                              do_constant_folding=True)
        except Exception as legacy_error:  # noqa: BLE001 - retry with the other exporter
            shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
            try:
                torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=max(opset, 18),
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=shapes, verbose=False)
            except Exception as dynamo_error:  # noqa: BLE001
                raise RuntimeError(f"ONNX export failed with both exporters: {legacy_error!r}; "
                                   f"{dynamo_error!r}") from dynamo_error
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(_metadata(cfg))
    proto.producer_name = "ghostnetv3"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int],
                       cfg: Optional[dict] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, *input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
        traced = torch.jit.freeze(traced.eval())  # constants folded; batch size stays free
        torch.jit.save(traced, str(path), _extra_files={META_KEY: json.dumps(_metadata(cfg))})
    return path


def onnx_session(path: str | os.PathLike, threads: Optional[int] = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # onnxruntime's idle intra-op threads busy-wait for the next run by default, starving whatever
    # runs next in the process (PyTorch eager measured 2.8x slower right after it)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _runner(path: Path, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    if fmt in EDGE_FORMATS:
        return edge_runner(path, fmt)
    if fmt == "onnx":
        sess = onnx_session(path)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still the format asked for
        scripted = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return scripted(torch.from_numpy(x)).numpy()
    return run


def verify_export(model: nn.Module, path: str | os.PathLike, fmt: str, input_size: Sequence[int],
                  batch_sizes: Sequence[int] = (1,), seed: int = 0) -> float:
    """Max |exported - PyTorch| over random normal inputs of each batch size."""
    run = _runner(Path(path), fmt)
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
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
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
            export_edge(fused, tmp, fmt, input_size, batch_size, meta=_metadata(cfg))
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
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    with sigterm_interrupts(), made_folders(final.parent):
        try:
            diff, batch_sizes = _write_and_verify(fused, tmp, fmt, input_size, dynamic_batch, opset, cfg,
                                                  batch_size, log)
            if not diff <= tolerance:  # NaN fails too
                raise ExportMismatchError(f"{fmt} output differs from PyTorch: max |diff| = {diff:.3g} > "
                                          f"tolerance {tolerance:g} (nothing written to {final})", diff)
            size = file_size(tmp, fmt) if fmt in EDGE_FORMATS else tmp.stat().st_size
            if fmt in EDGE_FORMATS:
                commit_files(tmp, final, fmt)
            else:
                os.replace(tmp, final)
        finally:
            if fmt in EDGE_FORMATS:
                discard_files(tmp, fmt)
            elif tmp.exists():
                tmp.unlink()
    report = {"output": str(final), "format": fmt, "input_size": list(input_size),
              "dynamic_batch": bool(dynamic_batch or fmt == "torchscript"),
              "max_diff": diff, "tolerance": tolerance, "batch_sizes_checked": list(batch_sizes),
              "size_bytes": size, **{f"fusion_{k}" if not k.startswith("fusion") else k: v
                                     for k, v in info.items()}}
    if fmt in EDGE_FORMATS:
        report["files"] = [str(final)] + ([str(final.with_suffix(".bin"))] if fmt == "openvino" else []) \
            + [str(final) + ".json"]
    return report
