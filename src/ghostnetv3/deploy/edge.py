"""On-device formats: ExecuTorch (XNNPACK delegate), LiteRT (.tflite) and OpenVINO IR, fp32 and
INT8, each loaded back in its own runtime.

- ExecuTorch: `torch.export` -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`
  -> `.pte`, run with `executorch.runtime`. INT8: XNNPACK's PT2E quantizer (symmetric int8,
  per-channel weights), calibrated on real images, then lowered the same way; the graph it
  quantizes has its aliases dropped and its pools and hard-sigmoids written as ops XNNPACK runs in
  int8 (see `_drop_aliases`, `_xnnpack_quantizer_class`).
- LiteRT: `litert_torch.convert` -> `.tflite`, run with `ai_edge_litert`'s interpreter (its
  default XNNPACK delegate). INT8: LiteRT's PT2E quantizer, static, per-channel weights, with what
  its annotators miss after a non-strict export (adds, concats, pools, hard-sigmoid) annotated by
  aten op, so that the whole network runs in int8 (see `_annotate_by_target`).
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

from ghostnetv3.deploy.steps import quiet_output
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
    """Import `module` or say, in one line, which extra installs it. The import's own log lines
    (LiteRT's bundled TensorFlow prints absl and oneDNN notices, torchao a torch pytree deprecation)
    are silenced: they are not the user's business and buried our progress lines."""
    try:
        with quiet_output():
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

_aten = torch.ops.aten

# LiteRT's PT2E quantizer (litert-torch 0.10) annotates add, mul, cat and the relu fusions through
# `get_source_partitions`, which matches the nodes' `source_fn_stack` (or, for strings, the op's
# name): the default non-strict `torch.export` records none, so in GhostNetV3 every residual add,
# every ghost-module concat and the SE's hard-sigmoid (an ADD and a MUL in TFLite) stayed float,
# with a QUANTIZE / DEQUANTIZE pair around each (the 32-px demo: 22 float ADD, 7 float MUL, 22
# QUANTIZE, 27 DEQUANTIZE). `_annotate_by_target` annotates them by their aten op, with LiteRT's
# own specs, after `_rewrite_for_int8` has written hard-sigmoids and average pools as ops that
# both runtimes' int8 kernels cover. The written .tflite is then int8 from input to logits (no
# QUANTIZE or DEQUANTIZE left); RESIZE_NEAREST_NEIGHBOR (the DFC gate's) runs as TFLite's own int8
# kernel, outside the XNNPACK delegate, which has none (not for fp32 either).
#
# Average pools were unannotated too, and the pool's output got a scale of its own: TFLite's int8
# AVERAGE_POOL_2D needs one scale on input and output, so the converter gave the pool's input the
# pool output's scale as well: the tensor then had two scales, and a tfl.pad reading it (a conv
# whose PyTorch padding is not TFLite's SAME, e.g. stride 2 on an even map, is lowered as pad +
# VALID conv; pad must keep its input's scale) was refused with "'tfl.pad' op quantization
# parameters violate the same scale constraint": in GhostNetV3, every stride-2 block with DFC
# attention (the DFC pools the block input that the shortcut's padded stride-2 conv also reads).
# So pools (those `_pools_as_depthwise_convs` leaves), resizes, views and the relus not fused into
# an op before them keep their input's scale (TFLite's int8 kernels require it of most of them;
# for the rest it is one scale less).
_SAME_SCALE_OPS = frozenset({
    _aten.avg_pool2d.default, _aten.max_pool2d.default, _aten.adaptive_avg_pool2d.default,
    _aten.mean.dim, _aten.mean.default, _aten.upsample_nearest2d.vec, _aten.upsample_nearest2d.default,
    _aten.alias.default, _aten.clone.default, _aten.dropout.default, _aten.slice.Tensor,
    _aten.slice_copy.Tensor, _aten.view.default, _aten.view_copy.default, _aten.reshape.default,
    _aten._unsafe_view.default, _aten.flatten.using_ints, _aten.permute.default, _aten.squeeze.dim,
    _aten.squeeze.dims, _aten.unsqueeze.default, _aten.relu.default, _aten.relu_.default,
    _aten.hardtanh.default, _aten.hardtanh_.default,
})
_BINARY_OPS = frozenset({_aten.add.Tensor, _aten.add_.Tensor, _aten.mul.Tensor, _aten.mul_.Tensor})


def _arg(node: torch.fx.Node, i: int, name: str, default):
    """Argument `i` (keyword `name`) of a call, or its default."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _pair(v) -> list:
    """An int or 1- or 2-element size as [h, w] ([] stays [])."""
    v = [v] if isinstance(v, int) else list(v)
    return v * 2 if len(v) == 1 else v


def _fused_activation(node: torch.fx.Node) -> bool:
    """A relu or clamp that TFLite computes as the fused activation of the add or mul before it
    (RELU, RELU6, RELU_N1_TO_1): no scale between the two."""
    if node.op != "call_function":
        return False
    if node.target in (_aten.relu.default, _aten.relu_.default):
        return True
    if node.target in (_aten.hardtanh.default, _aten.hardtanh_.default):
        bounds = (float(_arg(node, 1, "min_val", -1.0)), float(_arg(node, 2, "max_val", 1.0)))
        return bounds in ((0.0, 6.0), (-1.0, 1.0))
    return False


def _annotated(node: torch.fx.Node) -> bool:
    a = node.meta.get("quantization_annotation")
    return a is not None and a._annotated


def _quantized_output(node) -> bool:
    a = node.meta.get("quantization_annotation") if isinstance(node, torch.fx.Node) else None
    return a is not None and a._annotated and a.output_qspec is not None


def _fused_user(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    """The unannotated relu or clamp that is the one user of `node`, if that is so."""
    users = list(node.users)
    ok = len(users) == 1 and _fused_activation(users[0]) and not _annotated(users[0])
    return users[0] if ok else None


def _annotate_binary(node: torch.fx.Node, act_in, act_out) -> int:
    """An add or mul: its tensor inputs quantized, its output too or, where its one user is a relu
    or clamp, that user's output instead (LiteRT's add_relu / mul_relu: the two run as one int8
    op). Returns how many nodes were annotated."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    act = _fused_user(node)
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map={a: act_in for a in node.args[:2] if isinstance(a, torch.fx.Node)},
        output_qspec=None if act is not None else act_out, _annotated=True)
    if act is not None:
        act.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=act_out, _annotated=True)
    return 1 + (act is not None)


def _annotate_by_target(gm: torch.fx.GraphModule, act_in, act_out, fixed=None) -> int:
    """Annotate, by `node.target`, what LiteRT's static annotators left float (see above), with
    the config's activation specs `act_in` / `act_out` and its fixed sigmoid spec `fixed`, in graph
    order so that each node sees its producers' annotations:

    - add / mul: `_annotate_binary` (LiteRT's add / add_relu / mul / mul_relu annotations);
    - cat: inputs and output share one scale, as TFLite's int8 CONCATENATION (and XNNPACK's) needs
      (LiteRT's cat annotator, sharing with the first input that has a quantized producer);
    - sigmoid (with `fixed`): LiteRT's fixed qparams also where its input is float; hardswish: in
      and out (TFLite's HARD_SWISH);
    - `_SAME_SCALE_OPS`: the input quantized like the tensor's other users (shared with its
      producer's output where that is quantized), the output sharing the input's qparams.

    Returns how many nodes were annotated."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec
    if act_in is None or act_out is None:  # dynamic (weight-only) configs: nothing to do
        return 0

    def annotate(node, inputs, output=None):
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, output_qspec=output, _annotated=True)

    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or _annotated(node):
            continue
        target = node.target
        if target in _BINARY_OPS:
            count += _annotate_binary(node, act_in, act_out)
            continue
        if target == _aten.cat.default:
            inputs = [a for a in node.args[0] if isinstance(a, torch.fx.Node)]
            source = next((a for a in inputs if _quantized_output(a)), inputs[0])
            shared = SharedQuantizationSpec((source, node))
            annotate(node, {a: act_in if a is source else shared for a in inputs}, shared)
        elif target == _aten.sigmoid.default and fixed is not None:
            annotate(node, {node.args[0]: act_in}, fixed)
        elif target == _aten.hardswish.default:
            annotate(node, {node.args[0]: act_in}, act_out)
        elif target in _SAME_SCALE_OPS and isinstance(node.args[0], torch.fx.Node):
            x = node.args[0]
            annotate(node, {x: SharedQuantizationSpec(x) if _quantized_output(x) else act_in},
                     SharedQuantizationSpec((x, node)))
        else:
            continue
        count += 1
    return count


def _constant(gm: torch.fx.GraphModule, value: torch.Tensor, prefix: str, like: torch.fx.Node) -> torch.fx.Node:
    """A get_attr node of a new buffer of `gm` holding `value`, with a "val" (annotators read
    shapes there) in the fake mode of `like`'s."""
    from torchao.quantization.pt2e.utils import get_new_attr_name_with_prefix
    name = get_new_attr_name_with_prefix(prefix)(gm)
    gm.register_buffer(name, value)
    node = gm.graph.get_attr(name)
    fake = getattr(like.meta.get("val"), "fake_mode", None)
    node.meta["val"] = fake.from_tensor(value, static_shapes=True) if fake is not None else value
    return node


def _replace(gm: torch.fx.GraphModule, node: torch.fx.Node, new: Sequence[torch.fx.Node]) -> None:
    """`new` (inserted before `node`, the last one its result) replaces `node`."""
    for n in new:
        n.meta.update({k: v for k, v in node.meta.items() if k in ("val", "nn_module_stack", "stack_trace")})
    node.replace_all_uses_with(new[-1])
    gm.graph.erase_node(node)


def _decompose_hardsigmoid(gm: torch.fx.GraphModule) -> int:
    """Write each hard-sigmoid as clamp(x + 3, 0, 6) * (1/6), PyTorch's definition: TFLite has no
    hard-sigmoid op (the converter writes the same ADD and MUL, float), and these three quantize
    as one int8 ADD with a fused RELU6 and one int8 MUL. The constants are tensors of x's rank
    (1 x ... x 1): LiteRT keeps an elementwise op in NHWC only if all its inputs are 4-D, and
    wraps it in two transposes otherwise. Returns how many were rewritten."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != _aten.hardsigmoid.default:
            continue
        x = node.args[0]
        ones = [1] * (x.meta["val"].dim() if "val" in x.meta else 0)
        with gm.graph.inserting_before(node):
            three, sixth = (_constant(gm, torch.full(ones, v), "_hardsigmoid_constant_", x) for v in (3.0, 1 / 6))
            shifted = gm.graph.call_function(_aten.add.Tensor, (x, three))
            clamped = gm.graph.call_function(_aten.hardtanh.default, (shifted, 0.0, 6.0))
            scaled = gm.graph.call_function(_aten.mul.Tensor, (clamped, sixth))
        _replace(gm, node, [shifted, clamped, scaled])
        count += 1
    return count


def _pools_as_depthwise_convs(gm: torch.fx.GraphModule) -> int:
    """Write each unpadded average pool (GhostNetV3's DFC pool: 2x2, stride 2) as the depthwise
    conv it is, every weight 1/(kh*kw) (1/4: exact in fp32 and in int8, 127 * scale): TFLite's
    XNNPACK delegate runs int8 DEPTHWISE_CONV_2D but not int8 AVERAGE_POOL_2D, which ran outside
    it, splitting the delegated graph at every DFC (ExecuTorch's XNNPACK partitioner has no int8
    average pool either). The conv is marked, to keep the pool's scale (`_pool_convs_keep_scale`).
    Returns how many were rewritten."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != _aten.avg_pool2d.default:
            continue
        x = node.args[0]
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        kernel = _pair(node.args[1])
        stride = _pair(_arg(node, 2, "stride", [])) or kernel
        if (val is None or val.dim() != 4 or any(_pair(_arg(node, 3, "padding", 0)))
                or _arg(node, 4, "ceil_mode", False) or _arg(node, 6, "divisor_override", None) is not None):
            continue
        c = int(val.shape[1])
        weight = torch.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        with gm.graph.inserting_before(node):
            conv = gm.graph.call_function(_aten.conv2d.default, (
                x, _constant(gm, weight, "_pool_weight_", x), None, stride, [0, 0], [1, 1], c))
        _replace(gm, node, [conv])
        conv.meta["ghostnetv3_avg_pool"] = True
        count += 1
    return count


def _pool_convs_keep_scale(gm: torch.fx.GraphModule) -> None:
    """The depthwise convs of `_pools_as_depthwise_convs` (annotated like any conv) keep their
    input's scale on their output, as the pools did: on the 32-px demo (2,000 images) INT8 top-1
    75.45 with it, 75.10 with an observer of their own."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    for node in gm.graph.nodes:
        if node.meta.get("ghostnetv3_avg_pool") and _quantized_output(node):
            node.meta["quantization_annotation"].output_qspec = SharedQuantizationSpec((node.args[0], node))


def _rewrite_for_int8(model: torch.fx.GraphModule, config) -> torch.fx.GraphModule:
    """Both quantizers' first step (static configs): hard-sigmoids and average pools written as
    the ops the int8 kernels cover (`_decompose_hardsigmoid`, `_pools_as_depthwise_convs`)."""
    act = config.input_activation if config is not None else None
    if act is not None and not act.is_dynamic:
        if _decompose_hardsigmoid(model) + _pools_as_depthwise_convs(model):
            model.graph.lint()
            model.recompile()
    return model


@functools.lru_cache(maxsize=None)
def _litert_quantizer_class() -> type:
    mod = require("litert_torch.quantize.pt2e_quantizer", "LiteRT INT8")
    from litert_torch.quantize.pt2e_quantizer_utils import (get_fixed_qparams_qspec, get_input_act_qspec,
                                                            get_output_act_qspec, propagate_annotation)

    class LiteRTQuantizer(mod.PT2EQuantizer):
        """LiteRT's PT2E quantizer; static configs also annotate by aten op what its annotators
        leave float after a non-strict export (see `_annotate_by_target`)."""

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            # before LiteRT's own pass, which turns scalar operands into tensors
            return super().transform_for_annotation(_rewrite_for_int8(model, self.global_config))

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            _pool_convs_keep_scale(model)
            c = self.global_config
            if c is not None and _annotate_by_target(model, get_input_act_qspec(c), get_output_act_qspec(c),
                                                     get_fixed_qparams_qspec(c)):
                propagate_annotation(model)
            return model

    return LiteRTQuantizer


@functools.lru_cache(maxsize=None)
def _xnnpack_quantizer_class() -> type:
    mod = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch INT8")

    class XNNPACKQuantizer(mod.XNNPACKQuantizer):
        """XNNPACK's PT2E quantizer (it annotates by aten op already); static configs first get the
        rewrites of `_rewrite_for_int8` (XNNPACK's partitioner has no int8 average pool or
        hard-sigmoid either: they ran in fp32 inside the delegate), and an add or mul followed by
        a clamp quantized after the clamp (XNNPACK's annotators fuse relu only: the hard-sigmoid's
        x + 3 would be observed before its clamp to [0, 6])."""

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return super().transform_for_annotation(_rewrite_for_int8(model, self.global_config))

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            c = self.global_config
            if c is not None and c.input_activation is not None and not c.input_activation.is_dynamic:
                for node in model.graph.nodes:  # the add / mul + clamp pairs, before XNNPACK's annotators
                    if node.op == "call_function" and node.target in _BINARY_OPS and _fused_user(node):
                        _annotate_binary(node, c.input_activation, c.output_activation)
            model = super().annotate(model)
            _pool_convs_keep_scale(model)
            return model

    return XNNPACKQuantizer


def _pt2e_quantizer(fmt: str, per_channel: bool, observer: str):
    """XNNPACK's quantizer for ExecuTorch, LiteRT's for .tflite; `observer` swaps the activation
    observer (both default to a histogram observer)."""
    import dataclasses
    require("torchao.quantization.pt2e.observer", "INT8 quantization")  # first import: silenced
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver
    if observer not in OBSERVERS:
        raise ValueError(f"observer '{observer}': use one of {', '.join(OBSERVERS)}")
    if fmt == "executorch":
        mod = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch INT8")
        quantizer = _xnnpack_quantizer_class()()
        config = mod.get_symmetric_quantization_config(is_per_channel=per_channel)
    else:
        mod = require("litert_torch.quantize.pt2e_quantizer", "LiteRT INT8")
        quantizer = _litert_quantizer_class()()
        config = mod.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
    ctr = (HistogramObserver if observer == "histogram" else MinMaxObserver).with_args(eps=2 ** -12)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    return quantizer.set_global(config)


def _drop_aliases(gm: torch.fx.GraphModule) -> int:
    """Remove the aten.alias nodes of an exported graph (GhostNetV3's ghost modules slice their
    concat to its full width, `[:, :out_chs]`, which exports as an alias): XNNPACK's partitioner
    does not take alias_copy, so each one split the delegated graph (the 32-px demo: 32 splits),
    and the alias's output got a scale of its own, a requantization after every concat. Returns
    how many were removed."""
    count = 0
    for node in list(gm.graph.nodes):
        if (node.op == "call_function" and node.target == _aten.alias.default
                and isinstance(node.args[0], torch.fx.Node)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def pt2e_quantize(model: nn.Module, example: torch.Tensor, calib: Iterable[np.ndarray], fmt: str,
                  per_channel: bool = True, observer: str = "histogram") -> tuple[nn.Module, Any, int]:
    """(converted INT8 graph module, quantizer, images calibrated on). The graph is exported at
    the example's batch size, so calibration batches are fed in chunks of that size."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = _pt2e_quantizer(fmt, per_channel, observer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(model, (example,)).module()
        _drop_aliases(graph)
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
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), quiet_output():  # NNCF's progress
        q = on_openvino_thread(nncf.quantize, ov_model, nncf.Dataset(items), subset_size=len(items),
                               fast_bias_correction=False)
    return q, len(items) * batch


# ---------------------------------------------------------------- export

def _write_executorch(program_model: nn.Module, example: torch.Tensor, path: Path) -> None:
    require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")  # silenced import
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    with warnings.catch_warnings(), quiet_output():  # its lowering logs (torch's cpp_extension notice, ...)
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
    with warnings.catch_warnings(), quiet_output():  # the converter prints progress bars to fds 1, 2
        warnings.simplefilter("ignore")
        litert_torch.convert(program_model, (example,), **kw).export(str(path))


def _convert_openvino(model: nn.Module, example: torch.Tensor):
    ov = require("openvino", "OpenVINO export")
    with warnings.catch_warnings(), quiet_output():  # torch's "No CUDA runtime is found" on its first trace
        warnings.simplefilter("ignore")
        return ov.convert_model(model, example_input=example, input=[list(example.shape)])


def _save_openvino(ov_model, path: Path, meta: dict[str, Any]) -> None:
    import openvino as ov
    ov_model.set_rt_info(json.dumps(meta), ["ghostnetv3"])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # fp32 as asked; fp16 is a separate choice


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
        lib = require("executorch.extension.pybindings.portable_lib", "ExecuTorch")
        with quiet_output():  # cpuinfo probes and "Resetting threadpool to N threads", on every call
            lib._unsafe_reset_threadpool(int(threads))


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
        with quiet_output():  # the runtime's cpuinfo probes
            method = runtime.Runtime.get().load_program(str(path)).load_method("forward")
        return lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()
    if fmt == "tflite":
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
