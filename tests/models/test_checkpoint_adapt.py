"""The README's Python snippet: ImageNet (3-channel, 1000-class) weights of the official release layout into a
1-channel, 10-class model — the stem's RGB kernels are summed (timm's adapt_input_conv), the head is new."""
import timm
import torch

import ghostnetv3
from tests.conftest import randomize_bn_stats


def _reference_layout(sd: dict) -> dict:
    """timm keys -> the reference code's (`.bn.` inside the ghost modules)."""
    return {(k.replace("bn1.", "bn.") if "bn1." in k and (".ghost" in k or ".dw_rpr_" in k) else k): v
            for k, v in sd.items()}


def test_readme_snippet_loads_rgb_imagenet_weights_into_a_gray_model(tmp_path):
    torch.manual_seed(0)
    t = randomize_bn_stats(timm.create_model("ghostnetv3_100"), seed=5).eval()  # 3 ch, 1000 classes
    path = tmp_path / "ghostnetv3-1.0.pth.tar"
    torch.save({"state_dict": _reference_layout(t.state_dict()), "state_dict_ema": _reference_layout(t.state_dict())},
               path)
    # as in the README
    model = ghostnetv3.create_model("ghostnetv3_100", num_classes=10, in_chans=1)
    ghostnetv3.load_checkpoint(model, str(path), use_ema=True, reset_head=True)
    model.eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.forward_features(x)
        ref = t.forward_features(x.expand(-1, 3, -1, -1))  # the gray image as RGB
    assert (ours - ref).abs().max() < 1e-4
    assert model.get_classifier().out_features == 10
