"""On-device formats: ExecuTorch (XNNPACK delegate), LiteRT (.tflite) and OpenVINO IR, fp32 and
INT8, each loaded back in its own runtime.

- ExecuTorch: `torch.export` -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`
  -> `.pte`, run with `executorch.runtime`. INT8: XNNPACK's PT2E quantizer (symmetric int8,
  per-channel weights), calibrated on real images, then lowered the same way.
- LiteRT: `litert_torch.convert` -> `.tflite`, run with `ai_edge_litert`'s interpreter (its
  default XNNPACK delegate). INT8: LiteRT's PT2E quantizer, static, per-channel weights, with
  average pools annotated to keep their input's scale (see `_share_pool_qparams`).
- OpenVINO: `openvino.convert_model` -> `.xml` + `.bin`, run on the CPU plugin. INT8: NNCF
  post-training quantization.

Every file has a fixed input shape (batch, C, H, W): that is what phones run and what these
converters optimize best. What the model expects (image size, channels, mean/std, classes) is
written next to it as `<file>.json`, for the app that feeds it and for `quantize`/`bench`.

The runtimes are the optional `edge` extra; a missing one raises `MissingExtraError`, a
one-line message naming `pip install ghostnetv3[edge]`.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib
import json
import os
import signal
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.errors import UserError

__all__ = ["EDGE_FORMATS", "INT8_FORMATS", "OBSERVERS", "MissingExtraError", "require",
           "export_edge", "export_edge_int8", "edge_runner", "write_sidecar", "read_sidecar",
           "set_executorch_threads", "on_openvino_thread"]

# format -> file suffix
EDGE_FORMATS = {"executorch": ".pte", "tflite": ".tflite", "openvino": ".xml"}
# formats whose INT8 path goes through a PT2E quantizer (calibrated in PyTorch, then lowered)
INT8_FORMATS = ("executorch", "tflite", "openvino")
# PT2E activation observers: histogram (minimizes the L2 quantization error; the quantizers'
# default) or plain min/max
OBSERVERS = ("histogram", "minmax")
# top-level modules of the edge extra's packages
_EDGE_PACKAGES = ("executorch", "torchao", "litert_torch", "ai_edge_litert", "openvino", "nncf")


class MissingExtraError(UserError, ImportError):
    """A runtime of the `edge` extra is not installed."""


def require(module: str, what: str):
    """Import `module` or say, in one line, which extra installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _EDGE_PACKAGES:
            raise  # a broken install of something else: keep the traceback
        raise MissingExtraError(f"{what} needs the '{e.name.split('.')[0]}' package (missing): "
                                f"pip install ghostnetv3[edge]") from e


def _check_format(fmt: str) -> str:
    if fmt not in EDGE_FORMATS:
        raise ValueError(f"unknown on-device format '{fmt}': use one of {', '.join(EDGE_FORMATS)}")
    return fmt


# ---------------------------------------------------------------- OpenVINO's own thread

# OpenVINO's CPU plugin (2026.4) gives the thread that compiles or runs a model an alternate signal
# stack of its own and puts the previous one back when the model is destroyed; models destroyed in
# another order than they were made leave the thread on a freed stack, and the next signal handled
# there (SIGCHLD when a child exits, SIGINT, SIGTERM) kills the process with a segmentation fault.
# So every OpenVINO compile, inference and release runs on one thread that blocks all signals.
_OV_POOL: Optional[concurrent.futures.ThreadPoolExecutor] = None


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


def on_openvino_thread(fn: Callable, *args, **kwargs):
    """Run fn(*args, **kwargs) on OpenVINO's thread and return its result (or raise its error)."""
    global _OV_POOL
    if threading.current_thread().name.startswith("openvino"):  # already there (e.g. a release during GC)
        return fn(*args, **kwargs)
    if _OV_POOL is None:
        _OV_POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="openvino",
                                                         initializer=_block_signals)
    return _OV_POOL.submit(fn, *args, **kwargs).result()


# ---------------------------------------------------------------- metadata sidecar

def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    side = _sidecar(Path(path))
    side.write_text(json.dumps(meta, indent=2) + "\n")
    return side


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    side = _sidecar(Path(path))
    return json.loads(side.read_text()) if side.is_file() else {}


def output_files(path: str | os.PathLike, fmt: str) -> list[Path]:
    """Every file one export writes (OpenVINO: .xml and .bin), sidecar last."""
    path = Path(path)
    files = [path] + ([path.with_suffix(".bin")] if fmt == "openvino" else [])
    return files + [_sidecar(path)]


# ---------------------------------------------------------------- quantization (PT2E)

# LiteRT's PT2E quantizer (litert-torch 0.10) leaves aten.avg_pool2d unannotated: the pool reads the
# float tensor itself while its other users read it through its quantize/dequantize pair, and the
# pool's output gets an observer of its own (the next conv's input). TFLite's int8 AVERAGE_POOL_2D
# needs one scale on input and output, so the converter gives the pool's input the pool output's
# scale as well: the tensor then has two scales, and a tfl.pad reading it (a conv whose PyTorch
# padding is not TFLite's SAME, e.g. stride 2 on an even map, is lowered as pad + VALID conv; pad
# must keep its input's scale) is refused with "'tfl.pad' op quantization parameters violate the
# same scale constraint". In GhostNetV3 that is every stride-2 block with DFC attention: the DFC
# pools the block input that the shortcut's padded stride-2 depthwise conv also reads.
_SHARED_SCALE_POOLS = (torch.ops.aten.avg_pool2d.default,)


def _share_pool_qparams(gm: torch.fx.GraphModule, act_qspec) -> int:
    """Annotate each unannotated average pool of `gm` as LiteRT annotates adaptive_avg_pool2d:
    its input quantized like the tensor's other users (shared with its producer's output where
    that is annotated), its output sharing the input's qparams. Returns how many were annotated."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _SHARED_SCALE_POOLS:
            continue
        own = node.meta.get("quantization_annotation")
        if own is not None and own._annotated:
            continue
        x = node.args[0]
        produced = x.meta.get("quantization_annotation")
        in_qspec = (SharedQuantizationSpec(x) if produced is not None and produced.output_qspec is not None
                    else act_qspec)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={x: in_qspec}, output_qspec=SharedQuantizationSpec((x, node)), _annotated=True)
        count += 1
    return count


@functools.lru_cache(maxsize=None)
def _litert_quantizer_class() -> type:
    mod = require("litert_torch.quantize.pt2e_quantizer", "LiteRT INT8")
    from litert_torch.quantize.pt2e_quantizer_utils import propagate_annotation

    class LiteRTQuantizer(mod.PT2EQuantizer):
        """LiteRT's PT2E quantizer; static configs also annotate average pools (see above)."""

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            act = self.global_config.input_activation if self.global_config is not None else None
            if act is not None and _share_pool_qparams(model, act):
                propagate_annotation(model)  # views and means after a pool now share its qparams too
            return model

    return LiteRTQuantizer


def _pt2e_quantizer(fmt: str, per_channel: bool, observer: str):
    """XNNPACK's quantizer for ExecuTorch, LiteRT's for .tflite; `observer` swaps the activation
    observer (both default to a histogram observer)."""
    import dataclasses
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver
    if observer not in OBSERVERS:
        raise ValueError(f"observer '{observer}': use one of {', '.join(OBSERVERS)}")
    if fmt == "executorch":
        mod = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch INT8")
        quantizer, config = mod.XNNPACKQuantizer(), mod.get_symmetric_quantization_config(is_per_channel=per_channel)
    else:
        mod = require("litert_torch.quantize.pt2e_quantizer", "LiteRT INT8")
        quantizer = _litert_quantizer_class()()
        config = mod.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
    ctr = (HistogramObserver if observer == "histogram" else MinMaxObserver).with_args(eps=2 ** -12)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    return quantizer.set_global(config)


def pt2e_quantize(model: nn.Module, example: torch.Tensor, calib: Iterable[np.ndarray], fmt: str,
                  per_channel: bool = True, observer: str = "histogram") -> tuple[nn.Module, Any, int]:
    """(converted INT8 graph module, quantizer, images calibrated on). The graph is exported at
    the example's batch size, so calibration batches are fed in chunks of that size."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = _pt2e_quantizer(fmt, per_channel, observer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(model, (example,)).module()
        prepared = prepare_pt2e(graph, quantizer)
        b, count = example.shape[0], 0
        with torch.no_grad():
            for x in calib:
                for i in range(0, len(x) - b + 1, b):  # a ragged tail is dropped
                    prepared(torch.from_numpy(np.ascontiguousarray(x[i:i + b])))
                    count += b
        if count == 0:
            raise ValueError("no calibration images were read; check --calib-data and --calib-size")
        converted = convert_pt2e(prepared, fold_quantize=fmt != "tflite")
    return converted, quantizer, count


def _nncf_quantize(ov_model, calib: Iterable[np.ndarray], batch: int):
    """NNCF post-training quantization: its default preset (symmetric int8, per-channel weights)
    with the full bias correction instead of the fast one. On the demo's trained student (32 px,
    2,000 test images, fp32 75.75) the fast one dropped 1.75 points, the full one 0.65, the `mixed`
    preset 1.80 (docs/benchmarks.md)."""
    nncf = require("nncf", "OpenVINO INT8")
    items = [np.ascontiguousarray(x[i:i + batch]) for x in calib for i in range(0, len(x) - batch + 1, batch)]
    if not items:
        raise ValueError("no calibration images were read; check --calib-data and --calib-size")
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # calibration runs the CPU plugin
        q = on_openvino_thread(nncf.quantize, ov_model, nncf.Dataset(items), subset_size=len(items),
                               fast_bias_correction=False)
    return q, len(items) * batch


# ---------------------------------------------------------------- export

def _write_executorch(program_model: nn.Module, example: torch.Tensor, path: Path) -> None:
    require("executorch", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(program_model, (example,))
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)


def _write_tflite(program_model: nn.Module, example: torch.Tensor, path: Path, quantizer=None) -> None:
    litert_torch = require("litert_torch", "LiteRT export")
    kw = {}
    if quantizer is not None:
        from litert_torch.quantize.quant_config import QuantConfig
        kw["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    with warnings.catch_warnings(), _quiet_fds():
        warnings.simplefilter("ignore")
        litert_torch.convert(program_model, (example,), **kw).export(str(path))


def _convert_openvino(model: nn.Module, example: torch.Tensor):
    ov = require("openvino", "OpenVINO export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(model, example_input=example, input=[list(example.shape)])


def _save_openvino(ov_model, path: Path, meta: dict[str, Any]) -> None:
    import openvino as ov
    ov_model.set_rt_info(json.dumps(meta), ["ghostnetv3"])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # fp32 as asked; fp16 is a separate choice


@contextlib.contextmanager
def _quiet_fds():
    """The converters print progress bars to the process's file descriptors."""
    from ghostnetv3.deploy.export import _quiet
    with _quiet():
        yield


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def commit_files(tmp: Path, final: Path, fmt: str) -> None:
    """Move an export written under its temporary name into place, every file of it."""
    for src, dst in zip(output_files(tmp, fmt), output_files(final, fmt)):
        if src.exists():
            os.replace(src, dst)


def discard_files(tmp: Path, fmt: str) -> None:
    for f in output_files(tmp, fmt):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def export_edge(model: nn.Module, path: str | os.PathLike, fmt: str, input_size: Sequence[int],
                batch_size: int = 1, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write `model` (already fused, eval mode) as `fmt` with a fixed input (batch_size, *input_size).
    Writes `path` (+ `.bin` for OpenVINO) and the `<path>.json` sidecar; not atomic (see
    `export_model`, which writes under a temporary name and moves after the check)."""
    _check_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(batch_size, *input_size)
    meta = {**(meta or {}), "format": fmt, "input_shape": [batch_size, *map(int, input_size)], "int8": False}
    if fmt == "executorch":
        _write_executorch(model, example, path)
    elif fmt == "tflite":
        _write_tflite(model, example, path)
    else:
        _save_openvino(_convert_openvino(model, example), path, meta)
    write_sidecar(path, meta)
    return path


def export_edge_int8(model: nn.Module, path: str | os.PathLike, fmt: str, input_size: Sequence[int],
                     calib: Iterable[np.ndarray], batch_size: int = 1, per_channel: bool = True,
                     observer: str = "histogram", meta: Optional[dict[str, Any]] = None
                     ) -> tuple[Path, dict[str, Any], Optional[nn.Module]]:
    """INT8 export calibrated on `calib` (float32 NCHW batches, already normalized).

    Returns (path, quantization info, the quantized PyTorch graph or None for OpenVINO): the
    graph is what the INT8 file should compute, for checking the lowering."""
    _check_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(batch_size, *input_size)
    info: dict[str, Any] = {"per_channel": per_channel, "observer": observer}
    reference = None
    if fmt == "openvino":
        q, n = _nncf_quantize(_convert_openvino(model, example), calib, batch_size)
        info.update(quantizer="nncf", calib_images=n, observer="nncf default, full bias correction")
        meta_full = {**(meta or {}), "format": fmt, "input_shape": list(example.shape), "int8": True, **info}
        _save_openvino(q, path, meta_full)
    else:
        reference, quantizer, n = pt2e_quantize(model, example, calib, fmt, per_channel, observer)
        info.update(quantizer="xnnpack_pt2e" if fmt == "executorch" else "litert_pt2e", calib_images=n)
        if fmt == "executorch":
            _write_executorch(reference, example, path)
        else:
            _write_tflite(reference, example, path, quantizer)
        meta_full = {**(meta or {}), "format": fmt, "input_shape": list(example.shape), "int8": True, **info}
    write_sidecar(path, meta_full)
    return path, info, reference


# ---------------------------------------------------------------- runtimes

def set_executorch_threads(threads: Optional[int]) -> None:
    """ExecuTorch's XNNPACK threadpool is process-wide; size it like the other backends."""
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        _unsafe_reset_threadpool(int(threads))


def edge_runner(path: str | os.PathLike, fmt: str, threads: Optional[int] = None
                ) -> Callable[[np.ndarray], np.ndarray]:
    """A function float32 NCHW batch -> logits that runs `path` in its own runtime."""
    _check_format(fmt)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if fmt == "executorch":
        runtime = require("executorch.runtime", "Running a .pte")
        set_executorch_threads(threads)
        method = runtime.Runtime.get().load_program(str(path)).load_method("forward")
        return lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()
    if fmt == "tflite":
        litert = require("ai_edge_litert.interpreter", "Running a .tflite")
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
        return run_tflite
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

    # released on OpenVINO's thread too (see on_openvino_thread); at exit the process just ends
    weakref.finalize(run_openvino, on_openvino_thread, box.clear).atexit = False
    return run_openvino


def file_size(path: str | os.PathLike, fmt: str) -> int:
    """Bytes of the model itself (OpenVINO: .xml + .bin), not the sidecar."""
    return sum(f.stat().st_size for f in output_files(path, fmt)[:-1] if f.exists())
