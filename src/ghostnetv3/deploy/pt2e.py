"""INT8 through PT2E: the graph rewrites and annotations that make GhostNetV3 int8 from input to
logits in ExecuTorch (XNNPACK's quantizer) and LiteRT (LiteRT's quantizer), and `pt2e_quantize`.

The graph quantized has its aliases dropped (`_drop_aliases`) and its pools and hard-sigmoids
written as ops both runtimes run in int8 (`_rewrite_for_int8`); what LiteRT's annotators miss after
a non-strict export (adds, concats, pools, hard-sigmoid) is annotated by aten op
(`_annotate_by_target`). docs/benchmarks.md tells the story with numbers.
torchao, executorch and litert_torch are the optional `edge` extra: imported when used.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.extras import require

__all__ = ["OBSERVERS", "pt2e_quantize", "calibration_chunks"]

# PT2E activation observers: histogram (minimizes the L2 quantization error; the quantizers'
# default) or plain min/max
OBSERVERS = ("histogram", "minmax")
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
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation  # lazy: optional extra (edge)
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
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec  # lazy: optional extra (edge)
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
    from torchao.quantization.pt2e.utils import get_new_attr_name_with_prefix  # lazy: optional extra (edge)
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
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec  # lazy: optional extra (edge)
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
    from litert_torch.quantize.pt2e_quantizer_utils import (  # lazy: optional extra (edge)
        get_fixed_qparams_qspec, get_input_act_qspec, get_output_act_qspec, propagate_annotation)

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
    require("torchao.quantization.pt2e.observer", "INT8 quantization")  # first import: silenced
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver  # lazy: optional extra (edge)
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


def calibration_chunks(calib: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The calibration batches in contiguous chunks of `size` images, the exported batch (a ragged
    tail of a batch is dropped); NNCF's calibration takes the same chunks."""
    for x in calib:
        for i in range(0, len(x) - size + 1, size):
            yield np.ascontiguousarray(x[i:i + size])


def pt2e_quantize(model: nn.Module, example: torch.Tensor, calib: Iterable[np.ndarray], fmt: str,
                  per_channel: bool = True, observer: str = "histogram") -> tuple[nn.Module, Any, int]:
    """(converted INT8 graph module, quantizer, images calibrated on). The graph is exported at
    the example's batch size, so calibration batches are fed in chunks of that size."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # lazy: optional extra (edge)
    quantizer = _pt2e_quantizer(fmt, per_channel, observer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(model, (example,)).module()
        _drop_aliases(graph)
        prepared = prepare_pt2e(graph, quantizer)
        b, count = example.shape[0], 0
        with torch.no_grad():
            for chunk in calibration_chunks(calib, b):
                prepared(torch.from_numpy(chunk))
                count += b
        if count == 0:
            raise ValueError("no calibration images were read; check --calib-data and --calib-size")
        converted = convert_pt2e(prepared, fold_quantize=fmt != "tflite")
    return converted, quantizer, count

