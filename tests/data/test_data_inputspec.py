"""`data/inputspec.py`: a model's input contract, defined once (issue 24, item 3) — from a config, to
and from an exported file's metadata, and the eval transform every command feeds images through."""
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from timm.data import create_transform

from ghostnetv3.data import AugConfig, BatchAugment
from ghostnetv3.data.inputspec import SPEC_KEYS, InputSpec
from ghostnetv3.engine.config import TrainConfig
from ghostnetv3.engine.datasets import aug_config


def _images(n=3, chans=1, size=28, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=g)


def test_config_to_metadata_and_back_is_the_same_contract():
    cfg = TrainConfig(img_size=40, in_chans=1, eval_crop_pct=0.8, mean=(0.5,), std=(0.25,), interpolation="bicubic")
    spec = InputSpec.from_config(cfg)
    assert (spec.in_chans, spec.img_size, spec.mean, spec.std, spec.interpolation, spec.crop_pct) == \
        (1, 40, (0.5,), (0.25,), "bicubic", 0.8)
    meta = json.loads(json.dumps(spec.to_metadata()))  # as an exported file stores it
    assert set(meta) == set(SPEC_KEYS) | {"preprocess"}
    assert meta["eval_crop_pct"] == 0.8 and meta["mean"] == [0.5] and meta["img_size"] == 40
    assert InputSpec.from_metadata(meta) == spec
    # the same keys from a checkpoint's config dict, and from any object with the config's attributes
    assert InputSpec.from_config(cfg.to_dict()) == spec
    assert InputSpec.from_config(SimpleNamespace(**{k: getattr(cfg, k) for k in SPEC_KEYS})) == spec


def test_unset_keys_are_the_data_layers_defaults_and_named():
    spec = InputSpec.from_config({"img_size": 32}, in_chans=1)  # mean: null -> ImageNet's, averaged for gray
    default = AugConfig(image_size=32, in_chans=1)
    assert (spec.mean, spec.std) == default.norm_stats()
    assert (spec.interpolation, spec.crop_pct) == (default.interpolation, default.eval_crop_pct)
    assert InputSpec.missing({"in_chans": 1, "img_size": 32, "mean": [0.5]}) == ["std", "interpolation",
                                                                                  "eval_crop_pct"]
    assert InputSpec.from_config({"img_size": [32, 48], "in_chans": 3}).to_metadata()["img_size"] == [32, 48]
    with pytest.raises(ValueError, match="needs in_chans"):
        InputSpec.from_config(TrainConfig(img_size=32))  # in_chans None: 'the dataset's'
    with pytest.raises(ValueError, match="mean/std have 2 values but in_chans=3"):
        InputSpec.from_config({"img_size": 32, "in_chans": 3, "mean": [0.5, 0.5]})


@pytest.mark.parametrize("kw", [dict(), dict(eval_crop_pct=0.875, mean=(0.3,), std=(0.2,))], ids=["defaults", "set"])
def test_eval_transform_is_the_one_eval_used(kw):
    """The tensor eval's validation loader made before InputSpec (AugConfig built from the config keys)."""
    cfg = TrainConfig(img_size=24, **kw)
    before = AugConfig(image_size=24, in_chans=1, train=False, interpolation=cfg.interpolation,
                       **{k: getattr(cfg, k) for k in ("mean", "std", "eval_crop_pct") if getattr(cfg, k) is not None})
    x = _images()
    want = BatchAugment(before)(x, torch.arange(len(x)), 0)
    spec = InputSpec.from_config(cfg, in_chans=1)
    assert torch.equal(spec.eval_transform()(x), want)
    assert torch.equal(BatchAugment(aug_config(cfg, 1, train=False))(x, torch.arange(len(x)), 0), want)  # engine's
    assert spec.describe().startswith(f"bilinear resize of the short side to {int(24 / before.eval_crop_pct)} px")


def test_other_interpolations_go_through_timms_per_image_transform():
    """BatchAugment resamples bilinearly only: a bicubic contract is timm's transform, image by image."""
    spec = InputSpec.from_config({"img_size": 24, "in_chans": 1, "interpolation": "bicubic", "eval_crop_pct": 0.75})
    x = _images()
    got = spec.eval_transform()(x)
    tf = create_transform(input_size=(1, 24, 24), is_training=False, interpolation="bicubic", crop_pct=0.75,
                          mean=spec.mean, std=spec.std)
    want = torch.stack([tf(Image.fromarray(img[0].numpy(), "L")) for img in x])
    assert got.shape == (3, 1, 24, 24) and torch.equal(got, want)
    bilinear = InputSpec.from_config({"img_size": 24, "in_chans": 1, "eval_crop_pct": 0.75}).eval_transform()(x)
    assert (got - bilinear).abs().max() > 1e-2  # the interpolation is honoured, not dropped
