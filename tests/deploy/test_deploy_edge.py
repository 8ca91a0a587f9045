"""On-device formats: export -> load in its own runtime -> compare with PyTorch; INT8 on real
images; a missing runtime is a one-line error; a failed command leaves no files.

The format tests use a 3-stage GhostNetV3 (the first plain block, a stride-2 block with DFC
attention, a 5x5 block with DFC and SE): every op of the full model, at a fraction of the
converters' time. The CLI quantize test uses timm's tiny `test_efficientnet` as a run directory.
"""
import collections
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from ghostnetv3.cli import main
from ghostnetv3.deploy import export as export_mod
from ghostnetv3.deploy.backends import BACKENDS, EDGE_FORMATS, litert
from ghostnetv3.deploy.export import ExportMismatchError, export_model, read_metadata
from ghostnetv3.deploy.extras import MissingExtraError, require
from ghostnetv3.deploy.prepare import to_deploy_form
from ghostnetv3.deploy.pt2e import pt2e_quantize
from ghostnetv3.deploy.runner import open_runner
from ghostnetv3.deploy.scoring import eval_batches, runner_top1
from ghostnetv3.models.ghostnet import GhostNet

SMALL_CFGS = [[[3, 16, 16, 0, 1]], [[3, 48, 24, 0, 2]], [[5, 72, 40, 0.25, 2]]]
IMG = 32


def small_ghostnet(in_chans: int) -> torch.nn.Module:
    torch.manual_seed(in_chans)
    model = GhostNet(num_classes=10, in_chans=in_chans, width=0.5, cfgs=SMALL_CFGS, out_indices=(0, 1, 2))
    for m in model.modules():  # non-trivial BatchNorm statistics, so fusion is tested on more than identities
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("fmt,in_chans", [("executorch", 3), ("tflite", 1), ("openvino", 1)])
def test_export_runs_in_its_runtime_and_matches_pytorch(tmp_path, fmt, in_chans):
    model = small_ghostnet(in_chans)
    out = tmp_path / f"m{EDGE_FORMATS[fmt]}"
    report = export_model(model, out, fmt, (in_chans, IMG, IMG), cfg={"model": "small", "img_size": IMG,
                                                                       "in_chans": in_chans, "num_classes": 10},
                          log=lambda m: None)
    assert report["max_diff"] < 1e-4 and report["fusion_was_train_form"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, out.name + ".json"] + (["m.bin"] if fmt == "openvino" else []))
    # the written file, reloaded, on a fresh input
    fused, _ = to_deploy_form(model, log=lambda m: None)
    x = torch.randn(1, in_chans, IMG, IMG)
    with torch.no_grad():
        ref = fused(x).numpy()
    np.testing.assert_allclose(open_runner(out, fmt, threads=1)(x.numpy()), ref, atol=1e-4, rtol=0)
    meta = read_metadata(out)
    assert (meta["format"], meta["input_shape"], meta["num_classes"]) == (fmt, [1, in_chans, IMG, IMG], 10)


def test_mismatch_writes_nothing(tmp_path, monkeypatch):
    real = export_mod.open_runner
    monkeypatch.setattr(export_mod, "open_runner", lambda p, f: (lambda x: real(p, f)(x) + 0.5))
    with pytest.raises(ExportMismatchError) as e:
        export_model(small_ghostnet(1), tmp_path / "m.xml", "openvino", (1, IMG, IMG), log=lambda m: None)
    assert e.value.max_diff == pytest.approx(0.5, abs=1e-3)
    assert list(tmp_path.iterdir()) == []


# On timm's tiny test_efficientnet: lowering a quantized GhostNetV3 graph to XNNPACK takes
# minutes on 2 busy cores (GhostNetV3's LiteRT INT8: test_tflite_int8_pool_beside_padded_conv).
@pytest.mark.parametrize("fmt", ["tflite"])
def test_int8_on_fashion_mnist(tmp_path, fmt):
    import timm
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1).eval()
    cfg = {"img_size": IMG, "in_chans": 1, "seed": 0}
    calib, n = eval_batches("fashion-mnist", "train", cfg, limit=16, batch_size=8)
    path, info, reference = BACKENDS[fmt].export_int8(model, tmp_path / f"q{EDGE_FORMATS[fmt]}", (1, IMG, IMG),
                                                      (x for x, _ in calib))
    assert info["calib_images"] == n == 16 and info["per_channel"]
    fp32 = tmp_path / f"f{EDGE_FORMATS[fmt]}"
    export_model(model, fp32, fmt, (1, IMG, IMG), log=lambda m: None)
    assert path.stat().st_size < fp32.stat().st_size / 2  # int8 weights
    run8, run32 = open_runner(path, fmt, 1), open_runner(fp32, fmt, 1)
    x, _ = next(eval_batches("fashion-mnist", "val", cfg, limit=4, batch_size=4)[0])
    with torch.no_grad():
        ref_q = reference(torch.from_numpy(x[:1])).numpy()
        ref = model(torch.from_numpy(x[:1])).numpy()
    out = run8(x[:1])
    # the lowered file computes the quantized graph (up to int8 rounding), and is near fp32
    assert np.abs(out - ref_q).max() < 0.1 * np.abs(ref_q).max() + 1e-3
    assert np.abs(out - ref).max() < 0.5 * np.abs(ref).max() + 1e-3
    (top32, top8), count = runner_top1([run32, run8], eval_batches("fashion-mnist", "val", cfg, limit=12,
                                                                   batch_size=5)[0], 1)
    assert count == 12 and 0 <= top8 <= 100 and 0 <= top32 <= 100


class PoolBesidePaddedConv(torch.nn.Module):
    """One tensor read by an average pool and by a conv whose padding TFLite lowers as pad + VALID
    conv (stride 2 on an even map): GhostNetV3's DFC pool and the stride-2 shortcut of its block."""

    def __init__(self):
        super().__init__()
        self.pw = torch.nn.Conv2d(4, 4, 1)
        self.dw = torch.nn.Conv2d(4, 4, 3, 2, 1, groups=4)

    def forward(self, x):
        return self.pw(F.avg_pool2d(x, 2, 2)) + self.dw(x)


@pytest.mark.parametrize("which", ["pattern", "ghostnet"])
def test_tflite_int8_pool_beside_padded_conv(tmp_path, which):
    # LiteRT's quantizer left avg_pool2d unannotated: the pool read the float tensor, its output got
    # its own scale, TFLite's int8 pool forced that scale onto the tensor as well, and the converter
    # refused the pad ("'tfl.pad' op quantization parameters violate the same scale constraint").
    # The pool now shares its input's qparams: the file converts and computes the quantized graph.
    torch.manual_seed(0)
    if which == "pattern":
        model, size = PoolBesidePaddedConv().eval(), (4, 8, 8)
    else:
        model, size = to_deploy_form(small_ghostnet(1), log=lambda m: None)[0], (1, IMG, IMG)
    path, _, reference = litert.export_int8(model, tmp_path / "q.tflite", size, [torch.randn(16, *size).numpy()])
    # the pool is now the depthwise conv it is (TFLite's XNNPACK delegate has no int8 pool), int8 in
    assert not [n for n in reference.graph.nodes if n.target == torch.ops.aten.avg_pool2d.default]
    pools = [n for n in reference.graph.nodes if n.meta.get("ghostnetv3_avg_pool")]
    assert pools and all("dequantize" in str(n.args[0].target) for n in pools)
    x = torch.randn(1, *size)
    with torch.no_grad():
        ref_q = reference(x).numpy()
    out = open_runner(path, "tflite", 1)(x.numpy())
    assert np.abs(out - ref_q).max() < 0.1 * np.abs(ref_q).max() + 1e-3  # int8 rounding only


def tflite_ops(path) -> list[tuple[str, list]]:
    """(op name, input dtypes) of each op of a .tflite as written (no delegate applied)."""
    litert = require("ai_edge_litert.interpreter", "Reading a .tflite")
    no_delegate = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = litert.Interpreter(model_path=str(path), experimental_op_resolver_type=no_delegate)
    interp.allocate_tensors()
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    return [(op["op_name"], [dtypes[i] for i in op["inputs"] if i >= 0]) for op in interp._get_ops_details()]


def test_tflite_int8_ghostnet_is_int8_throughout(tmp_path):
    # LiteRT's add and cat annotators match `source_fn_stack`, which the non-strict torch.export
    # does not record: the residual adds and the ghost concats read float tensors, the SE's
    # hard-sigmoid (no TFLite op: an ADD and a MUL) stayed float, and QUANTIZE / DEQUANTIZE ops
    # went around them. They are annotated by aten op now: no op of the file reads a float tensor.
    torch.manual_seed(0)
    model, size = to_deploy_form(small_ghostnet(1), log=lambda m: None)[0], (1, IMG, IMG)
    path, _, reference = litert.export_int8(model, tmp_path / "q.tflite", size, [torch.randn(16, *size).numpy()])
    ops = tflite_ops(path)
    assert [name for name, dtypes in ops if np.float32 in dtypes] == []
    count = collections.Counter(name for name, _ in ops)
    # 3 residual adds + the hard-sigmoid's x + 3; the DFC gate, the SE gate and the hard-sigmoid's / 6;
    # the 6 ghost modules' concats; no quantize / dequantize; the DFC pool a depthwise conv
    assert (count["ADD"], count["MUL"], count["CONCATENATION"]) == (4, 3, 6)
    assert not {"QUANTIZE", "DEQUANTIZE", "AVERAGE_POOL_2D"} & set(count)
    x = torch.randn(1, *size)
    with torch.no_grad():
        ref_q, ref = reference(x).numpy(), model(x).numpy()
    out = open_runner(path, "tflite", 1)(x.numpy())
    assert np.abs(out - ref_q).max() < 0.1 * np.abs(ref_q).max() + 1e-3  # int8 rounding only
    assert np.abs(out - ref).max() < 0.5 * np.abs(ref).max() + 1e-3


def test_executorch_int8_ghostnet_delegates_all_but_the_dfc_resize():
    # XNNPACK's partitioner takes no alias_copy (GhostNetV3's full-width slice of each concat
    # exports as an alias): every ghost module split the delegated graph. Nor has it an int8 pool
    # or hard-sigmoid: they ran in fp32 inside the delegate. The aliases are dropped, the pool is a
    # depthwise conv, the hard-sigmoid an add + clamp (quantized after the clamp) and a mul.
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    torch.manual_seed(0)
    model, size = to_deploy_form(small_ghostnet(1), log=lambda m: None)[0], (1, IMG, IMG)
    x = torch.zeros(1, *size)
    reference, _, _ = pt2e_quantize(model, x, [torch.randn(16, *size).numpy()], "executorch")
    aten = torch.ops.aten
    targets = collections.Counter(n.target for n in reference.graph.nodes)
    assert not {aten.alias.default, aten.avg_pool2d.default, aten.hardsigmoid.default} & set(targets)
    clamps = [n for n in reference.graph.nodes if n.target == aten.hardtanh.default]
    assert clamps and all(n.args[0].target == aten.add.Tensor for n in clamps)  # no scale between
    edge = to_edge_transform_and_lower(torch.export.export(reference, (x,)), partitioner=[XnnpackPartitioner()])
    outside = collections.Counter(n.target.name() for n in edge.exported_program().graph.nodes
                                  if n.op == "call_function" and hasattr(n.target, "name"))  # not getitem
    # one DFC: its nearest-neighbour resize (no XNNPACK kernel) between two delegated graphs
    assert outside == {"executorch_call_delegate": 2, "aten::upsample_nearest2d.vec": 1}, outside


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """A run directory of timm's tiny test_efficientnet (1 channel, 32 px, Fashion-MNIST)."""
    import timm
    d = tmp_path_factory.mktemp("timm_run")
    cfg = {"model": "test_efficientnet", "data": "fashion-mnist", "num_classes": 10, "in_chans": 1,
           "img_size": IMG, "seed": 0, "val_fraction": 0.1}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    sd = timm.create_model("test_efficientnet", num_classes=10, in_chans=1).state_dict()
    torch.save({"state_dict": sd, "num_classes": 10, "in_chans": 1, "config": cfg}, d / "best.pt")
    return d


def test_cli_quantize_executorch_reports_top1_and_sizes(timm_run, capsys):
    rc = main(["quantize", str(timm_run), "--format", "executorch", "--calib-data", "fashion-mnist",
               "--calib-size", "8", "--eval-size", "16", "--json", str(timm_run / "q.json")])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((timm_run / "q.json").read_text())
    assert r["format"] == "executorch" and r["quantizer"] == "xnnpack_pt2e" and r["calib_images"] == 8
    assert r["eval_images"] == 16 and 0 <= r["int8_top1"] <= 100
    assert r["int8_size_bytes"] < r["fp32_size_bytes"]
    names = sorted(p.name for p in (timm_run / "deploy").iterdir())
    assert names == ["model_fp32.pte", "model_fp32.pte.json", "model_int8.pte", "model_int8.pte.json"]
    assert "top-1" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_failed_quantize_leaves_no_files(timm_run, tmp_path, fmt, capsys):
    out = tmp_path / "out" / ("q.onnx" if fmt == "onnx" else "q.xml")
    rc = main(["quantize", str(timm_run), "--format", fmt, "--calib-data", str(tmp_path / "no_such_data"),
               "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install ghostnetv3\[edge\]"):
        require("litert_torch", "LiteRT export")
    rc = main(["export", "ghostnetv3_050", "--num-classes", "10", "--input-size", "1", str(IMG), str(IMG),
               "--format", "tflite", "--output", str(tmp_path / "m.tflite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "pip install ghostnetv3[edge]" in err[0]
    assert not (tmp_path / "m.tflite").exists()
    monkeypatch.setitem(sys.modules, "executorch", None)
    rc = main(["bench", "ghostnetv3_050", "--backends", "executorch", "--input-size", "1", str(IMG), str(IMG)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "pip install ghostnetv3[edge]" in err[0]


_OV_SIGNALS = """
import signal, subprocess, sys, gc
import numpy as np, timm
from ghostnetv3.deploy.backends import openvino
from ghostnetv3.deploy.runner import open_runner
m = timm.create_model("test_efficientnet", num_classes=3, in_chans=1).eval()
p = openvino.export(m, sys.argv[1], (1, 32, 32))
x = np.zeros((1, 1, 32, 32), np.float32)
a = open_runner(p, "openvino", 1); a(x)
b = open_runner(p, "openvino", 1); b(x)
del a; gc.collect(); del b; gc.collect()  # released in another order than made
signal.signal(signal.SIGCHLD, lambda *_: None)  # as torch's DataLoader does; Python handlers use the alt stack
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
child.kill(); child.wait()
print("survived", flush=True)
"""


def test_openvino_models_released_out_of_order_leave_signals_working(tmp_path):
    # OpenVINO's CPU plugin leaves the thread that ran two models, released out of order, on a freed
    # alternate signal stack: the next handled signal was a segfault (it killed `make test` at the
    # next child process exit). Run in a child, so a regression fails this test, not the suite.
    r = subprocess.run([sys.executable, "-c", _OV_SIGNALS, str(tmp_path / "m.xml")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])
