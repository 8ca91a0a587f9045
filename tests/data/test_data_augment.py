import pytest
import torch

from ghostnetv3.data import AugConfig, BatchAugment

RAW = dict(mean=(0.0,), std=(1 / 255,), in_chans=1)  # normalize to raw 0..255 values


def _imgs(n=8, c=1, h=28, w=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def test_identity_box_returns_image_and_flip_flips():
    x = _imgs()
    plain = BatchAugment(AugConfig(28, crop_mode="none", hflip=0, color_jitter=0, **RAW))
    assert torch.equal(plain(x, torch.arange(8), 0), x.float())
    flipped = BatchAugment(AugConfig(28, crop_mode="none", hflip=1, color_jitter=0, **RAW))
    assert torch.equal(flipped(x, torch.arange(8), 0), x.float().flip(-1))
    vflipped = BatchAugment(AugConfig(28, crop_mode="none", hflip=0, vflip=1, color_jitter=0, **RAW))
    assert torch.equal(vflipped(x, torch.arange(8), 0), x.float().flip(-2))


def test_explicit_box_crops_and_flag_flips_per_sample():
    x = _imgs(4, 3, 32, 32)
    aug = BatchAugment(AugConfig(16, color_jitter=0, mean=(0,) * 3, std=(1 / 255,) * 3))
    p = aug.sample_params(torch.arange(4), 0, image_hw=(32, 32))
    p["box"] = torch.tensor([[8.0, 4.0, 24.0, 20.0]] * 4)  # a 16x16 crop at (x=8, y=4)
    p["hflip"] = torch.tensor([False, True, False, True])
    out = aug.apply(x, p)
    crop = x[:, :, 4:20, 8:24].float()
    assert torch.equal(out[0], crop[0]) and torch.equal(out[2], crop[2])
    assert torch.equal(out[1], crop[1].flip(-1)) and torch.equal(out[3], crop[3].flip(-1))


def test_pad_crop_is_a_zero_padded_shift():
    x = _imgs(64)
    aug = BatchAugment(AugConfig(28, crop_mode="pad_crop", padding=4, hflip=0, color_jitter=0, **RAW))
    p = aug.sample_params(torch.arange(64), 3, image_hw=(28, 28))
    out = aug.apply(x, p)
    padded = torch.nn.functional.pad(x.float(), [4] * 4)
    for i in range(64):
        dx, dy = int(p["box"][i, 0]) + 4, int(p["box"][i, 1]) + 4
        assert torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28])
    assert len({tuple(b) for b in p["box"][:, :2].tolist()}) > 10


def test_same_seed_index_key_same_params_different_key_differs():
    cfg = AugConfig(32, reprob=0.5)
    a, b = BatchAugment(cfg, seed=1), BatchAugment(cfg, seed=1)
    idx = torch.tensor([5, 9, 11, 200])
    pa, pb = a.sample_params(idx, 4, (28, 28)), b.sample_params(idx, 4, (28, 28))
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    # a sample's params do not depend on its batch-mates
    single = a.sample_params(idx[2:3], 4, (28, 28))
    assert torch.equal(single["box"][0], pa["box"][2])
    other = a.sample_params(idx, 5, (28, 28))
    assert not torch.equal(other["box"], pa["box"])
    other_seed = BatchAugment(cfg, seed=2).sample_params(idx, 4, (28, 28))
    assert not torch.equal(other_seed["box"], pa["box"])
    x = _imgs(4)
    assert torch.equal(a(x, idx, 4), b(x, idx, 4))
    assert not torch.equal(a(x, idx, 4), a(x, idx, 5))


def test_rrc_boxes_follow_scale_and_ratio():
    aug = BatchAugment(AugConfig(32, scale=(0.25, 0.5), ratio=(0.75, 1.33)))
    box = aug.sample_params(torch.arange(2000), 0, (100, 100))["box"]
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    assert (box[:, :2] >= 0).all() and (box[:, 2] <= 100).all() and (box[:, 3] <= 100).all()
    area = w * h / 10000
    assert area.min() > 0.23 and area.max() < 0.52
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4


def test_color_jitter_factors_and_effect():
    aug = BatchAugment(AugConfig(28, crop_mode="none", hflip=0, color_jitter=0.4, **RAW))
    p = aug.sample_params(torch.arange(500), 0, (28, 28))
    for k in ("brightness", "contrast", "saturation"):
        assert p[k].min() >= 0.6 and p[k].max() <= 1.4 and p[k].std() > 0.1
    x = _imgs(4)
    p = aug.sample_params(torch.arange(4), 0, (28, 28))
    p["brightness"] = torch.tensor([1.0, 0.5, 1.0, 1.0])
    p["contrast"] = torch.tensor([1.0, 1.0, 0.0, 1.0])
    out = aug.apply(x, p)
    assert torch.allclose(out[0], x[0].float(), atol=1e-3)
    assert torch.allclose(out[1], x[1].float() * 0.5, atol=1e-3)
    assert torch.allclose(out[2], x[2].float().mean().expand(1, 28, 28), atol=1e-3)


@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
def test_random_erasing(mode):
    x = torch.full((200, 1, 16, 16), 128, dtype=torch.uint8)
    aug = BatchAugment(AugConfig(16, in_chans=1, crop_mode="none", hflip=0, color_jitter=0,
                                 reprob=0.5, remode=mode, mean=(128 / 255,), std=(0.5,)))
    out = aug(x, torch.arange(200), 0)  # background normalizes to exactly 0
    erased = (out != 0).flatten(1).any(1)
    if mode == "const":  # const fills with 0 too: check the params instead
        p = aug.sample_params(torch.arange(200), 0, (16, 16))
        erased = p["erase"]
        area = (p["erase_box"][:, 2] * p["erase_box"][:, 3]).float() / 256
        assert area[erased].min() >= 0.01 and area[erased].max() <= 0.4  # 2%-1/3, rounded to pixels
    assert 0.3 < erased.float().mean() < 0.6
    assert torch.equal(out, aug(x, torch.arange(200), 0))


def test_gray_to_three_channels_and_rgb_to_one():
    x = _imgs(4)
    aug3 = BatchAugment(AugConfig(28, crop_mode="none", hflip=0, color_jitter=0))
    y = aug3(x, torch.arange(4), 0)
    assert y.shape == (4, 3, 28, 28)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(y * std + mean, (x.float() / 255).expand(4, 3, 28, 28), atol=1e-5)
    rgb = _imgs(4, 3)
    y1 = BatchAugment(AugConfig(28, in_chans=1, crop_mode="none", hflip=0, color_jitter=0))(rgb, torch.arange(4), 0)
    assert y1.shape == (4, 1, 28, 28)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    m, s = sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3
    assert torch.allclose(y1[:, 0] * s + m, luma / 255, atol=1e-5)


def test_eval_is_deterministic_resize_center_crop():
    x = _imgs(6, 3, 40, 40)
    aug = BatchAugment(AugConfig(20, train=False, eval_crop_pct=1.0, mean=(0,) * 3, std=(1 / 255,) * 3))
    a, b = aug(x, torch.arange(6), 0), aug(x, torch.arange(6) + 100, 7)
    assert torch.equal(a, b)  # no dependence on index or key
    # an exact 2x downscale: the box filter gives the 2x2 means
    assert torch.allclose(a, torch.nn.functional.avg_pool2d(x.float(), 2), atol=1e-4)
    crop = BatchAugment(AugConfig(20, train=False, eval_crop_pct=0.5, mean=(0,) * 3, std=(1 / 255,) * 3))
    assert torch.equal(crop(x, torch.arange(6), 0), x[:, :, 10:30, 10:30].float())


def test_bad_config_errors():
    with pytest.raises(ValueError, match="crop_mode"):
        BatchAugment(AugConfig(32, crop_mode="random"))
    with pytest.raises(ValueError, match="bilinear"):
        BatchAugment(AugConfig(32, interpolation="bicubic"))
    with pytest.raises(ValueError, match="in_chans"):
        BatchAugment(AugConfig(32, in_chans=1, mean=(0.5, 0.5), std=(0.5, 0.5)))


def test_view_does_not_depend_on_output_size():
    x = _imgs(16, 1, 28, 28)
    idx, key = torch.arange(16) * 3, torch.arange(16) % 4
    small = BatchAugment(AugConfig(28, color_jitter=0.4), seed=5)
    big = BatchAugment(AugConfig(56, color_jitter=0.4), seed=5)
    ps, pb = small.sample_params(idx, key, (28, 28)), big.sample_params(idx, key, (28, 28))
    for k in ("box", "hflip", "vflip", "brightness", "contrast", "saturation"):
        assert torch.equal(ps[k], pb[k]), k
    # the 56 px view, box-filtered back to 28 px, is close to the 28 px view
    down = torch.nn.functional.avg_pool2d(big(x, idx, key), 2)
    assert (down - small(x, idx, key)).abs().mean() < 0.15


def test_resize_at_load_matches_interpolate():
    from ghostnetv3.data.datasets import resize_u8

    x = _imgs(10, 3, 40, 30)
    for hw in ((20, 20), (64, 48), (37, 13)):
        ref = torch.nn.functional.interpolate(x.float(), size=hw, mode="bilinear", align_corners=False,
                                              antialias=True).round().clamp(0, 255)
        assert (resize_u8(x, hw).float() - ref).abs().max() <= 1
