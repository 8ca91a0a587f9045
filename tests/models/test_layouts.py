"""The small-input layout (`output_stride`, `stem_stride`): the rule, the true strides in every
surface (feature_info, features_only, forward_intermediates, FX, torch.export, ONNX metadata), the
official layout's weights loading into any layout, exact fusion, and the layout travelling with a
run into eval / export / predict."""
import json

import numpy as np
import onnx
import pytest
import timm
import torch
from PIL import Image
from timm.models import create_feature_extractor

import ghostnetv3
from ghostnetv3.engine.config import TrainConfig, from_checkpoint_dict, load_config
from ghostnetv3.engine.layout import auto_img_size, describe_layout, native_image_size
from ghostnetv3.models.ghostnet import auto_layout, auto_output_stride, stage_strides
from ghostnetv3.rep import reparameterize
from tests.conftest import randomize_bn_stats
from tests.engine.engine_helpers import run_cli

LAYOUTS = [(2, 8), (1, 8), (2, 16)]  # (stem_stride, output_stride): two small-input layouts + one more


def _model(stem, os_, **kw):
    torch.manual_seed(0)
    return ghostnetv3.create_model("ghostnetv3_050", num_classes=10, in_chans=1, stem_stride=stem,
                                   output_stride=os_, **kw)


def _x(size=32, seed=0):
    return torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_rule_drops_the_stem_stride_first_then_the_last_stages():
    sizes = (28, 32, 33, 48, 63, 64, 96, 224)
    assert [auto_layout(s) for s in sizes] == [(1, 16), (1, 16), (2, 32), (2, 32), (2, 32), (2, 32), (2, 32),
                                               (2, 32)]
    assert auto_layout(16) == (1, 8) and auto_layout(8) == (1, 4)
    # a stem stride the user set is kept; the output stride follows it
    assert auto_output_stride(32, stem_stride=2) == 16 and auto_output_stride(224, stem_stride=1) == 16
    assert auto_output_stride(32, stem_stride=1) == 16 and auto_output_stride(28, stem_stride=2) == 16
    assert auto_output_stride(16, stem_stride=2) == 8
    assert stage_strides(32) == [2, 2, 2, 2] and stage_strides(8) == [2, 2, 1, 1]
    assert stage_strides(8, stem_stride=1) == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="output_stride=32 is not reachable with stem_stride=1"):
        stage_strides(32, stem_stride=1)
    with pytest.raises(ValueError, match="not reachable"):
        _model(2, 12)


@pytest.mark.parametrize("stem,os_", LAYOUTS)
def test_every_layout_has_the_paper_layouts_parameters_and_fuses_exactly(stem, os_):
    paper = _model(2, 32)
    small = _model(stem, os_)
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in paper.state_dict().items()}
    small.load_state_dict(paper.state_dict())  # strict: strides carry no weights
    small = randomize_bn_stats(small).eval()
    fused = reparameterize(small)
    assert ghostnetv3.verify_fusion(small, fused, _x()) < 1e-4
    assert fused.output_stride == os_


def test_the_official_layout_from_timms_ghostnetv3_loads_into_a_small_input_layout(tmp_path):
    src = timm.create_model("ghostnetv3_050", num_classes=10)  # timm's own port: the public key layout
    torch.save({"state_dict": src.state_dict()}, tmp_path / "timm.pth")
    ours = ghostnetv3.create_model("ghostnetv3_050", num_classes=10, output_stride=8)
    ghostnetv3.load_checkpoint(ours, tmp_path / "timm.pth")
    ref = ghostnetv3.create_model("ghostnetv3_050", num_classes=10)
    ghostnetv3.load_checkpoint(ref, tmp_path / "timm.pth")
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("stem,os_", LAYOUTS)
def test_feature_info_features_only_and_intermediates_report_the_true_strides(stem, os_):
    model = _model(stem, os_).eval()
    reductions = [f["reduction"] for f in model.feature_info]
    expected = [stem]
    for s in stage_strides(os_, stem):
        expected.append(expected[-1] * s)
    assert reductions == expected and reductions[-1] == os_
    maps = model.forward_intermediates(_x(64), intermediates_only=True)
    assert [64 // m.shape[-1] for m in maps] == reductions
    feats = timm.create_model("gnv3_050", in_chans=1, stem_stride=stem, output_stride=os_, features_only=True)
    assert feats.feature_info.reduction() == reductions
    assert [64 // f.shape[-1] for f in feats.eval()(_x(64))] == reductions


@pytest.mark.parametrize("stem,os_", [(2, 8), (2, 16)])
def test_fx_and_torch_export_give_the_true_map_sizes(stem, os_):
    model = randomize_bn_stats(_model(stem, os_, drop_rate=0.0)).eval()
    taps = [f["module"] for f in model.feature_info]
    fx = create_feature_extractor(model, return_nodes=taps)
    out = list(fx(_x()).values())
    assert [32 // o.shape[-1] for o in out] == [f["reduction"] for f in model.feature_info]
    fused = reparameterize(model)
    exported = torch.export.export(fused, (_x(),)).module()
    torch.testing.assert_close(exported(_x(seed=1)), fused(_x(seed=1)), rtol=1e-5, atol=1e-5)


def test_describe_layout_names_the_maps():
    assert describe_layout(_model(2, 8), 32) == "stem stride 2, output stride 8 (maps 16-8-4-4-4 at 32 px)"
    assert describe_layout(_model(1, 16), 32) == "stem stride 1, output stride 16 (maps 32-16-8-4-2 at 32 px)"
    assert describe_layout(_model(2, 32), 32) == "stem stride 2, output stride 32 (maps 16-8-4-2-1 at 32 px)"


def test_a_checkpoint_from_before_the_knob_keeps_the_paper_layout():
    old = TrainConfig(model="ghostnetv3_050", img_size=32).to_dict()
    del old["output_stride"]  # what a checkpoint written before 2026-12-07 holds
    assert from_checkpoint_dict(old).output_stride == 32
    assert from_checkpoint_dict(dict(old, stem_stride=1)).output_stride == 16
    assert from_checkpoint_dict(dict(old, model="mobilenetv2_100")).output_stride is None
    assert from_checkpoint_dict(dict(old, output_stride=8)).output_stride == 8


def _folder(root, size, n=6, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_the_input_size_follows_the_data_unless_set(tmp_path, capsys):
    data = _folder(tmp_path / "d48", 48)
    assert native_image_size(str(data)) == 48
    assert native_image_size("fashion-mnist") == 28
    assert auto_img_size(str(data))[0] == 48
    assert auto_img_size("fashion-mnist")[0] == 32  # the GhostNet minimum
    assert auto_img_size(str(_folder(tmp_path / "d999", 999, n=1)))[0] == 224
    assert auto_img_size(str(tmp_path / "nothing"))[0] == 224
    assert load_config(None, data=str(data)).img_size == 48
    assert "input size 48 px: the data's typical image is 48 px" in capsys.readouterr().out
    assert load_config(None, data=str(data), img_size=64).img_size == 64
    assert load_config("recipes/fashion_mnist.yaml").img_size == 32  # the recipe's value


def test_the_layout_is_chosen_printed_saved_and_carried_into_eval_export_and_predict(tmp_path):
    data = _folder(tmp_path / "data", 32, n=8)
    out = tmp_path / "runs"
    r = run_cli(["train", "--model", "ghostnetv3_050", "--data", str(data), "--epochs", "1", "--batch-size", "4",
                 "--num-conv-branches", "1", "--scale-branch", "false", "--identity-branch", "false",
                 "--model-ema", "false", "--channels-last", "false", "--threads", "1", "--output", str(out),
                 "--experiment", "run"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "input size 32 px" in r.stdout
    assert "layout: stem stride 1, output stride 16 (maps 32-16-8-4-2 at 32 px)" in r.stdout
    assert "M MACs per image" in r.stdout
    run = out / "run"
    saved = load_config(run / "config.yaml")
    assert (saved.stem_stride, saved.output_stride, saved.img_size) == (1, 16, 32)
    ev = run_cli(["eval", str(run), "--json", "--threads", "1"])
    assert ev.returncode == 0, ev.stderr[-2000:]
    onnx_path = tmp_path / "m.onnx"
    ex = run_cli(["export", str(run), "--format", "onnx", "-o", str(onnx_path), "--threads", "1"])
    assert ex.returncode == 0, ex.stderr[-2000:]
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    blob = json.loads(meta["ghostnetv3"])
    assert blob["output_stride"] == 16 and blob["stem_stride"] == 1
    img = next((data / "a").glob("*.png"))
    pr = run_cli(["predict", str(run), str(img), "--threads", "1"])
    assert pr.returncode == 0, pr.stderr[-2000:]
