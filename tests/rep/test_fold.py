"""`fold_batchnorm`: every conv+BN site folded into the conv (the inference form a teacher runs), the
same outputs as the unfolded model, and the unfolded model back when registration order lies."""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torchvision

from ghostnetv3.rep import fold_batchnorm


def _trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_timm_and_torchvision_nets_fold_to_the_same_outputs():
    x = torch.randn(3, 3, 32, 32)
    for model in (timm.create_model("test_efficientnet", num_classes=10), torchvision.models.mobilenet_v2(num_classes=10)):
        model = _trained_looking(model)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded, why = fold_batchnorm(model, torch.randn(2, 3, 32, 32))
        assert why is None and folded is not model and _bns(model) > 0 and _bns(folded) == 0
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched


def test_a_conv_bias_and_a_bn_activation_survive_folding():
    act = timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU)
    model = _trained_looking(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), act))
    with torch.no_grad():
        model[0].bias.uniform_(-1, 1)
    folded, why = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert why is None and isinstance(folded[1], nn.Sequential) and isinstance(folded[1][0], nn.ReLU)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
        assert (folded(x) >= 0).all()  # the activation is still there


class _BnBeforeConv(nn.Module):
    """Registers conv then bn, but applies the BN to the input: folding would change the outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_registration_order_that_is_not_data_flow_leaves_the_model_unfolded():
    model = _trained_looking(_BnBeforeConv())
    out, why = fold_batchnorm(model, torch.randn(2, 4, 6, 6))
    assert out is model and "changed the outputs" in why and _bns(out) == 1
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    out, why = fold_batchnorm(plain, torch.randn(1, 3, 8, 8))
    assert out is plain and why == "no conv followed by a BatchNorm"
