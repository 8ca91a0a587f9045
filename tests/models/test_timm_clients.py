"""Real clients that take a timm model name: segmentation_models_pytorch's `tu-<name>` encoder and
torchvision's `BackboneWithFPN`, with our GhostNetV3 inside, trained briefly and fused."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import ghostnetv3
from ghostnetv3.rep import has_branches, reparameterize

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
smp = pytest.importorskip("segmentation_models_pytorch", reason="dev extra: segmentation-models-pytorch")


def _fashion_mnist_masks(n: int = 32):
    """n real Fashion-MNIST images padded to 32×32, with the object's nonzero pixels as the mask."""
    with gzip.open(FMNIST) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)[: n * 784].reshape(n, 1, 28, 28)
    x = F.pad(torch.from_numpy(raw.copy()).float() / 255, (2, 2, 2, 2))
    return (x - 0.286) / 0.353, (x > 0).float()


def test_smp_unet_with_our_encoder_trains_and_fuses():
    x, mask = _fashion_mnist_masks()
    torch.manual_seed(0)
    unet = smp.Unet("tu-gnv3_050", encoder_weights=None, in_channels=1, classes=1,
                    decoder_channels=(32, 16, 16, 8, 8))
    assert unet.encoder.out_channels == [1, 8, 12, 20, 40, 480]
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    unet.train()
    losses = []
    for step in range(8):
        batch = slice(8 * (step % 4), 8 * (step % 4) + 8)
        loss = F.binary_cross_entropy_with_logits(unet(x[batch]), mask[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses  # it learns the masks
    unet.eval()
    fused = reparameterize(unet)
    assert has_branches(unet) and not has_branches(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), unet(x), rtol=1e-4, atol=1e-4)


def test_torchvision_backbone_with_fpn_route():
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    # timm's FeatureListNet flattens `blocks` into direct children, which IntermediateLayerGetter needs
    body = timm.create_model("gnv3_050", features_only=True, feature_cls="list", out_indices=(2, 3, 4))
    names = [m.replace(".", "_") for m in body.feature_info.module_name()]
    backbone = BackboneWithFPN(body, {n: str(i) for i, n in enumerate(names)}, body.feature_info.channels(), 32)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = backbone.train()(x)
    assert [m.shape[-1] for m in maps.values()][:3] == [8, 4, 2]
    sum(m.mean() for m in maps.values()).backward()
    backbone.eval()
    fused = reparameterize(backbone)
    assert not has_branches(fused)
    with torch.no_grad():
        for a, b in zip(backbone(x).values(), fused(x).values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    ours = ghostnetv3.create_model("ghostnetv3_050", features_only=True, out_indices=(2, 3, 4))
    assert ours.feature_info.channels() == body.feature_info.channels()
