import tarfile

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ghostnetv3.data import AugConfig, ImageSet, TimmTransformDataset, load_streaming_dataset, timm_transform


def test_timm_transform_dataset_with_randaugment():
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    ds = ImageSet(x, torch.arange(8) % 2, ["a", "b"], "tiny")
    tf = timm_transform(AugConfig(32), auto_augment="rand-m9-mstd0.5")
    images, labels = next(iter(DataLoader(TimmTransformDataset(ds, tf), batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 1, 0, 1]
    ev = TimmTransformDataset(ds, timm_transform(AugConfig(32, train=False, in_chans=1)), in_chans=1)
    assert ev[0][0].shape == (1, 32, 32)


def _make_folder(root):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 10, 3), i * 40, np.uint8)).save(root / c / f"{i}.png")


def test_streaming_folder_and_tar(tmp_path):
    _make_folder(tmp_path / "imgs")
    tf = timm_transform(AugConfig(8, train=False))
    ds = load_streaming_dataset(str(tmp_path / "imgs"), "train", tf)
    assert len(ds) == 6
    img, label = ds[4]
    assert img.shape == (3, 8, 8) and label == 1
    with tarfile.open(tmp_path / "imgs.tar", "w") as t:
        t.add(tmp_path / "imgs", arcname=".")
    ds = load_streaming_dataset(str(tmp_path / "imgs.tar"), "train", tf)
    assert len(ds) == 6 and ds[0][0].shape == (3, 8, 8)


def test_batched_eval_matches_timm_eval_transform(fmnist_small):
    from ghostnetv3.data import BatchAugment

    ds = fmnist_small.subset(range(32))
    for size, pct, tol in ((32, 1.0, 0.01), (32, 0.875, 0.01), (24, 1.0, 0.05)):
        cfg = AugConfig(size, train=False, eval_crop_pct=pct)
        ours = BatchAugment(cfg)(ds.images, torch.arange(32), 0)
        ref = TimmTransformDataset(ds, timm_transform(cfg))
        theirs = torch.stack([ref[i][0] for i in range(32)])
        # PIL rounds to uint8 and its downscale filter is a triangle, ours a box
        assert (ours - theirs).abs().mean() < tol, (size, pct)
