"""The GhostNetV3 backbone inside torchvision's FCOS: strides, and fusion that changes nothing."""
import pytest
import torch

from ghostnetv3.detect import DenseOutputs, build_detector
from ghostnetv3.detect.evaluate import fuse_detector, fusion_diff
from ghostnetv3.rep import has_branches
from tests.conftest import randomize_bn_stats


def detector(name="ghostnetv3_050", **kw):
    torch.manual_seed(0)
    return randomize_bn_stats(build_detector(name, 10, 1, image_size=64, **kw)).eval()


def test_backbone_gives_strides_8_16_32():
    model = detector()
    feats = model.backbone.body(torch.zeros(1, 1, 96, 96))
    assert [f.shape[-1] for f in feats] == [12, 6, 3]
    maps = model.backbone(torch.zeros(1, 1, 96, 96))
    assert [m.shape[1] for m in maps.values()] == [model.backbone.out_channels] * 3


def test_fused_backbone_is_the_same_detector_in_float64():
    model = detector().double()
    fused = fuse_detector(model)
    assert has_branches(model) and not has_branches(fused)
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert fusion_diff(model, fused, x) < 1e-10
    # the check is able to fail: a changed fused kernel shows up
    conv = next(m for m in fused.backbone.body.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1)
    with torch.no_grad():
        conv.weight.mul_(1.01)
    assert fusion_diff(model, fused, x) > 1e-6


def test_fused_detector_gives_the_same_detections():
    model = detector()
    with torch.no_grad():  # an objectness bias so that some detections pass the score threshold
        model.head.classification_head.cls_logits.bias.fill_(0.0)
    fused = fuse_detector(model)
    x = list(torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        a, b = model(x), fused(x)
    assert len(a[0]["boxes"]) > 0
    for da, db in zip(a, b):
        assert torch.equal(da["labels"], db["labels"])
        torch.testing.assert_close(da["boxes"], db["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(da["scores"], db["scores"], atol=1e-4, rtol=0)


def test_plain_backbone_is_one_conv_per_site():
    plain, rep = detector("ghostnetv2_050"), detector()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(plain) < n(rep)
    # fused, both are the same architecture: only BN folding remains for the plain one
    assert n(fuse_detector(plain)) == n(fuse_detector(rep))
    with torch.no_grad():
        out = DenseOutputs(plain)(torch.rand(1, 1, 64, 64))
    assert out.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 11 + 4 + 1)


def test_only_ghostnet_backbones():
    with pytest.raises(ValueError, match="detection backbones are ghostnetv3_\\* / ghostnetv2_\\* models, not 'resnet18'"):
        build_detector("resnet18", 10, 1, image_size=64)


def test_backbone_starts_from_a_classification_checkpoint(tmp_path):
    from ghostnetv3.models import create_model

    torch.manual_seed(5)
    cls = create_model("ghostnetv3_050", num_classes=10, in_chans=1)
    torch.save({"state_dict": cls.state_dict(), "state_dict_ema": None}, tmp_path / "cls.pt")
    det = build_detector("ghostnetv3_050", 3, 1, image_size=64, init_checkpoint=str(tmp_path / "cls.pt"))
    body = det.backbone.body.state_dict()
    for k, v in cls.state_dict().items():
        if k in body and not k.startswith(("classifier", "conv_head")):
            assert torch.equal(body[k], v), k
