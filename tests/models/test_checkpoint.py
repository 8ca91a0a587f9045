"""Loading checkpoints in every layout: timm (train/fused, V3/V2), the reference code's files,
ours (safetensors and weights-only .pt), DDP prefixes, EMA choice, class-count handling."""
import torch
import timm
import pytest

import ghostnetv3
from ghostnetv3.models import load_checkpoint, save_state_dict
from ghostnetv3.rep import reparameterize
from tests.conftest import randomize_bn_stats


def _timm_model(name, **kw):
    torch.manual_seed(0)
    return randomize_bn_stats(timm.create_model(name, **kw), seed=5).eval()


def _x(size=96):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["ghostnetv3_100", "ghostnetv3_050"])
def test_timm_parity_train_form_and_fused(name):
    t = _timm_model(name)
    ours = load_checkpoint(ghostnetv3.create_model(name), t.state_dict()).eval()
    x = _x()
    with torch.no_grad():
        ref = t(x)
        assert (ours(x) - ref).abs().max() <= 1e-5
        assert (reparameterize(ours)(x) - ref).abs().max() <= 1e-5
        t_fused = timm.utils.reparameterize_model(t)
        ours_fused = load_checkpoint(reparameterize(ghostnetv3.create_model(name).eval()), t_fused.state_dict())
        assert (ours_fused(x) - ref).abs().max() <= 1e-5


def test_timm_v2_loads_into_our_v2():
    t = _timm_model("ghostnetv2_100")
    ours = load_checkpoint(ghostnetv3.create_model("ghostnetv2_100"), t.state_dict()).eval()
    with torch.no_grad():
        assert (ours(_x()) - t(_x())).abs().max() <= 1e-5


def _reference_layout(sd: dict) -> dict:
    """timm keys → the reference code's (inverse of timm's checkpoint_filter_fn)."""
    out = {}
    for k, v in sd.items():
        if "bn1." in k and (".ghost" in k or ".dw_rpr_" in k):
            k = k.replace("bn1.", "bn.")
        out[k] = v
    return out


def test_reference_file_with_ema_ddp_prefix_and_profiler_keys(tmp_path):
    t = _timm_model("ghostnetv3_050", num_classes=10)
    raw = t.state_dict()
    ema = dict(raw)
    ema["classifier.weight"] = raw["classifier.weight"] * 1.5
    ema["conv_stem.weight"] = raw["conv_stem.weight"] * 0.9
    ref = {"state_dict": {"module." + k: v for k, v in _reference_layout(raw).items()},
           "state_dict_ema": _reference_layout(ema), "epoch": 300}
    ref["state_dict"]["module.conv_stem.total_ops"] = torch.tensor([1.0])
    ref["state_dict_ema"]["blocks.0.0.total_params"] = torch.tensor([1.0])
    path = tmp_path / "ghostnetv3-1.0.pth.tar"
    torch.save(ref, path)
    x = _x(64)
    m_raw = load_checkpoint(ghostnetv3.create_model("ghostnetv3_050", num_classes=10), str(path), use_ema=False).eval()
    m_ema = load_checkpoint(ghostnetv3.create_model("ghostnetv3_050", num_classes=10), str(path), use_ema=True).eval()
    t_ema = timm.create_model("ghostnetv3_050", num_classes=10).eval()
    t_ema.load_state_dict(ema)
    with torch.no_grad():
        assert (m_raw(x) - t(x)).abs().max() <= 1e-5
        assert (m_ema(x) - t_ema(x)).abs().max() <= 1e-5
        assert (m_ema(x) - m_raw(x)).abs().max() > 1e-3


def test_our_files_safetensors_and_pt(tmp_path):
    m = randomize_bn_stats(ghostnetv3.create_model("ghostnetv3_050", num_classes=4)).eval()
    f = reparameterize(m)
    save_state_dict(f.state_dict(), str(tmp_path / "fused.safetensors"))
    torch.save({"model": m.state_dict()}, tmp_path / "train.pt")
    m2 = load_checkpoint(ghostnetv3.create_model("ghostnetv3_050", num_classes=4), str(tmp_path / "train.pt")).eval()
    f2 = load_checkpoint(reparameterize(ghostnetv3.create_model("ghostnetv3_050", num_classes=4).eval()),
                         str(tmp_path / "fused.safetensors"))
    x = _x(64)
    with torch.no_grad():
        assert (m2(x) - m(x)).abs().max() == 0
        assert (f2(x) - f(x)).abs().max() == 0


def test_class_count_mismatch_and_reset_head():
    t = _timm_model("ghostnetv3_050")  # 1000 classes
    with pytest.raises(ValueError, match="reset_head=True"):
        load_checkpoint(ghostnetv3.create_model("ghostnetv3_050", num_classes=10), t.state_dict())
    m = load_checkpoint(ghostnetv3.create_model("ghostnetv3_050", num_classes=10), t.state_dict(), reset_head=True)
    torch.testing.assert_close(m.conv_stem.weight, t.conv_stem.weight)


def test_unknown_layout_names_keys(tmp_path):
    sd = ghostnetv3.create_model("ghostnetv3_050").state_dict()
    sd["bogus.weight"] = torch.zeros(1)
    del sd["conv_stem.weight"]
    with pytest.raises(ValueError, match=r"bogus\.weight.*conv_stem\.weight"):
        load_checkpoint(ghostnetv3.create_model("ghostnetv3_050"), sd)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        load_checkpoint(ghostnetv3.create_model("ghostnetv3_050"), str(bad))
    with pytest.raises(ValueError, match="other form|another model"):  # train-form file into a fused model
        load_checkpoint(reparameterize(ghostnetv3.create_model("ghostnetv3_050").eval()), sd | {"conv_stem.weight": torch.zeros(1)})


class Evil:  # an arbitrary object: unpickling it would run code from the file
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(ghostnetv3.create_model("ghostnetv3_050"), str(path))
