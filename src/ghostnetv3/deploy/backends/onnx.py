"""ONNX, run with onnxruntime; INT8 with onnxruntime's static QDQ quantization.

Export goes through the TorchScript-based exporter (`dynamo=False`): on torch 2.14 it is exact
(~1e-8 on GhostNetV3), takes ~1 s instead of ~15 s, and writes the requested opset directly, where
the dynamo exporter only emits opset >= 18 and fails to down-convert. The dynamo exporter stays as
a fallback for models the tracer cannot handle. The metadata is JSON in `metadata_props`
(files.META_KEY); the batch may be dynamic.

INT8 (`quantize_onnx`): QDQ format, weights per output channel (a fused kernel sums several
BN-scaled branches, so channel ranges can differ widely), only the MAC-carrying ops quantized.
Activation ranges default to the 99.999th percentile of the calibration histogram: with minmax,
rare outliers set the scale, and INT8 lost 0.7 (Fashion-MNIST) and 1.9 (elpv) top-1 points where
percentile lost 0.2 and 0.0 (short CPU runs of ghostnetv3_050; per-tensor minmax lost 0.4 and 0.8).
Activations are uint8 (U8S8): onnxruntime's x86 kernels ran GhostNetV3-1.0 about 2x faster than
S8S8 here, and VNNI CPUs have no U8S8 saturation problem.
onnx and onnxruntime are the optional `deploy` extra.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.files import META_KEY, size_from_shape
from ghostnetv3.deploy.steps import quiet_output

__all__ = ["FORMAT", "SUFFIX", "FIXED_BATCH", "PACKAGES", "CALIB_METHODS", "QUANT_OP_TYPES", "export",
           "quantize_onnx", "even_batches", "onnx_session", "load_runner", "read_metadata"]

FORMAT, SUFFIX, FIXED_BATCH = "onnx", ".onnx", False
PACKAGES = ("onnx", "onnxruntime")
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Only the ops that carry the MACs. Quantizing everything also turned float shape arithmetic
# (timm's dynamic 'same' padding) into uint8 and broke the graph, and it bought no speed here.
QUANT_OP_TYPES = ("Conv", "Gemm", "MatMul")


def _torch_export(model: nn.Module, x: torch.Tensor, path: Path, dynamic_batch: bool, opset: int) -> None:
    """The legacy exporter, else the dynamo one (at opset >= 18)."""
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


def export(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], dynamic_batch: bool = False,
           opset: int = 17, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write `model` (fused, eval mode) for input (1 or any batch, *input_size), `meta` inside."""
    import onnx  # lazy: optional extra (deploy)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _torch_export(model, torch.zeros(1, *input_size), path, dynamic_batch, opset)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta or {})
    proto.producer_name = "ghostnetv3"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The stored metadata, the graph's `input_shape` (None for a dynamic axis) and the channels and
    size that shape fixes."""
    import onnx  # lazy: optional extra (deploy)
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    info = json.loads(meta.get(META_KEY, "{}"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    info["input_shape"] = [d.dim_value if d.HasField("dim_value") else None for d in dims]  # [None, 3, 224, 224]
    size_from_shape(info)
    return info


def onnx_session(path: str | os.PathLike, threads: Optional[int] = None):
    import onnxruntime as ort  # lazy: optional extra (deploy)
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


def load_runner(path: str | os.PathLike, threads: Optional[int] = None
                ) -> tuple[Callable[[np.ndarray], np.ndarray], Optional[int]]:
    """(float32 NCHW batch -> logits, the graph's fixed batch size or None when it is dynamic)."""
    sess = onnx_session(path, threads)
    inp = sess.get_inputs()[0]
    name, first = inp.name, inp.shape[0]
    return (lambda x: sess.run(None, {name: x})[0]), (first if isinstance(first, int) else None)


class _Reader:
    """onnxruntime CalibrationDataReader over pre-computed batches."""

    def __init__(self, input_name: str, batches):
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self):
        x = next(self.batches, None)
        return None if x is None else {self.input_name: x}

    def rewind(self):  # not needed by static calibration; here for the protocol
        raise RuntimeError("calibration batches can be read once")


def even_batches(batches, fixed: Optional[int] = None) -> tuple[list[np.ndarray], int]:
    """(the calibration images in batches of one size, how many images). onnxruntime's histogram
    calibrators (percentile, entropy) stack the outputs of every batch into one array, so a short
    last batch failed with numpy's "inhomogeneous shape" (162 images: 64 + 64 + 34). A dynamic-batch
    model gets the largest size up to the largest batch given that divides the count (every image
    used once: 162 -> 3 x 54, a prime count -> batches of 1); a static-batch one (`fixed`) its own
    size, the last batch completed with the first images again."""
    parts = [np.asarray(x, dtype=np.float32) for x in batches if len(x)]
    if not parts:
        return [], 0
    images = np.concatenate(parts)
    n = len(images)
    if fixed:
        size = fixed
        if n % size:
            images = np.concatenate([images, images[np.arange(size - n % size) % n]])
    else:
        size = max(d for d in range(1, min(max(len(p) for p in parts), n) + 1) if n % d == 0)
    return [images[i:i + size] for i in range(0, len(images), size)], n


@contextlib.contextmanager
def _their_failure(what: str) -> Iterator[None]:
    """A ValueError raised inside a third-party call is its bug or limit, not the user's input:
    re-raised as RuntimeError, so the CLI keeps the traceback instead of one line that reads as
    the user's fault."""
    try:
        yield
    except ValueError as e:
        raise RuntimeError(f"{what} failed: {e}") from e


def _check_options(calib_method: str, activation_type: str) -> None:
    if calib_method not in CALIB_METHODS:
        raise ValueError(f"calib method '{calib_method}': use one of {', '.join(CALIB_METHODS)}")
    if activation_type not in ("int8", "uint8"):
        raise ValueError(f"activation type '{activation_type}': use int8 or uint8")


def quantize_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calib_batches,
                  per_channel: bool = True, calib_method: str = "percentile",
                  activation_type: str = "uint8",
                  op_types: Sequence[str] = QUANT_OP_TYPES) -> dict[str, Any]:
    """Pre-process (shape inference, graph folding) then quantize_static in QDQ format, calibrated
    on every image of `calib_batches` (float32 NCHW batches of any sizes)."""
    import onnx  # lazy: optional extra (deploy)
    from onnxruntime.quantization import (  # lazy: optional extra (deploy)
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process  # lazy: optional extra (deploy)
    _check_options(calib_method, activation_type)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calib_method]
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    reader_cls = type("Reader", (_Reader, CalibrationDataReader), {})
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        with _their_failure("onnxruntime's quantization pre-processing"):
            quant_pre_process(str(fp32_path), str(pre))
        graph_input = onnx.load(str(pre), load_external_data=False).graph.input[0]
        batch_dim = graph_input.type.tensor_type.shape.dim[0]
        calib, count = even_batches(calib_batches, batch_dim.dim_value if batch_dim.HasField("dim_value") else None)
        if count == 0:
            raise ValueError("no calibration images were read; check --calib-data and --calib-size")
        reader = reader_cls(graph_input.name, calib)
        with contextlib.redirect_stdout(io.StringIO()), _their_failure("onnxruntime's INT8 calibration"):
            quantize_static(str(pre), str(int8_path), reader, quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, calibrate_method=method,
                            activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
    _copy_metadata(fp32_path, int8_path)
    return {"calib_images": count, "calib_method": calib_method, "per_channel": per_channel,
            "activation_type": activation_type, "op_types": list(op_types), "format": "QDQ",
            "calib_batch": len(calib[0])}


def _copy_metadata(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    import onnx  # lazy: optional extra (deploy)
    a = onnx.load(str(src), load_external_data=False)
    b = onnx.load(str(dst))
    have = {p.key for p in b.metadata_props}
    for p in a.metadata_props:
        if p.key not in have:
            b.metadata_props.add(key=p.key, value=p.value)
    onnx.save(b, str(dst))
