import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ghostnetv3.data import ImageSet, load_dataset

# not imported from conftest: with several tests/*/conftest.py, `import conftest` is ambiguous
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(
    not any(os.path.isfile(os.path.join(d, "train-images-idx3-ubyte.gz"))
            for d in (FMNIST, os.environ.get("GHOSTNETV3_DATA_DIR", FMNIST),
                      os.path.join(os.environ.get("GHOSTNETV3_DATA_DIR", FMNIST), "fashion-mnist"))),
    reason="needs `sudo apt-get install dataset-fashion-mnist`")


@needs_fmnist
def test_fashion_mnist_splits():
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 10000 and len(train.classes) == 10
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    assert load_dataset("fashion-mnist", "val").fingerprint() == test.fingerprint()
    assert train.name == "fashion-mnist:train"


def test_fashion_mnist_missing_says_what_to_install(monkeypatch, tmp_path):
    from ghostnetv3.data import datasets

    monkeypatch.setattr(datasets, "_DEBIAN_FMNIST", tmp_path / "nope")
    monkeypatch.setenv("GHOSTNETV3_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GHOSTNETV3_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="needs the Debian package's folder to link to")
def test_data_dir_override(monkeypatch, tmp_path):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for f in os.listdir(FMNIST):
        os.symlink(os.path.join(FMNIST, f), d / f)
    monkeypatch.setenv("GHOSTNETV3_DATA_DIR", str(tmp_path))
    assert len(load_dataset("fashion-mnist", "test")) == 10000


def test_elpv_split_is_stratified_and_fixed_by_seed():
    pytest.importorskip("elpv_dataset")
    tr = load_dataset("elpv", "train", image_size=32)
    va = load_dataset("elpv", "val", image_size=32)
    assert len(tr) + len(va) == 2624 and tr.images.shape[1:] == (1, 32, 32)
    assert tr.classes == ["p0", "p33", "p67", "p100"]
    assert abs(len(va) / 2624 - 0.25) < 0.01
    full = torch.cat([tr.labels, va.labels]).bincount().double() / 2624
    for part in (tr, va):
        assert (part.labels.bincount(minlength=4).double() / len(part) - full).abs().max() < 0.01
    assert load_dataset("elpv", "val", image_size=32).fingerprint() == va.fingerprint()  # cached path
    other = load_dataset("elpv", "val", image_size=32, seed=1)
    assert other.fingerprint() != va.fingerprint() and len(other) == len(va)
    assert abs(len(load_dataset("elpv", "val", image_size=32, val_fraction=0.5)) - 1312) <= 2  # per-class rounding


# ---- image folders --------------------------------------------------------------------------------
def _save(path, img, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)


def _rgb(seed, size=(16, 16)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def test_folder_with_mixed_modes(tmp_path):
    root = tmp_path / "ds"
    _save(root / "cat" / "a.png", _rgb(0))
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red -> white
    _save(root / "cat" / "b.png", rgba)
    _save(root / "cat" / "c.png", _rgb(1).convert("P", palette=Image.ADAPTIVE))
    _save(root / "dog" / "d.jpg", _rgb(2), "JPEG")
    _save(root / "dog" / "e.png", Image.new("L", (16, 16), 7))
    _save(root / "dog" / "f.png", Image.new("LA", (16, 16), (7, 255)))
    g16 = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))
    _save(root / "dog" / "g.png", g16)
    ds = load_dataset(str(root), "all")
    assert ds.classes == ["cat", "dog"] and len(ds) == 7 and ds.images.shape == (7, 3, 16, 16)
    assert (ds.images[1] == 255).all()  # transparent composited on white
    assert (ds.images[4] == 7).all() and (ds.images[5] == 7).all()  # gray replicated to RGB
    assert (ds.images[6] == 255).all()  # 16-bit white stays white
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_all_gray_folder_stays_one_channel_and_splits(tmp_path):
    for c in range(3):
        for i in range(10):
            _save(tmp_path / f"c{c}" / f"{i}.png", Image.new("L", (8, 8), c * 10 + i))
    tr = load_dataset(str(tmp_path), "train", seed=0)
    va = load_dataset(str(tmp_path), "val", seed=0)
    assert tr.images.shape[1] == 1 and len(tr) == 24 and len(va) == 6
    assert va.labels.bincount().tolist() == [2, 2, 2]
    assert not set(tr.images[:, 0, 0, 0].tolist()) & set(va.images[:, 0, 0, 0].tolist())


def test_train_val_layout_and_resize(tmp_path):
    for split in ("train", "validation"):
        for c in ("a", "b"):
            _save(tmp_path / split / c / "x.png", _rgb(0, (20, 12)))
            _save(tmp_path / split / c / "y.png", _rgb(1, (12, 20)))
    with pytest.raises(ValueError, match="image_size"):
        load_dataset(str(tmp_path), "train")
    va = load_dataset(str(tmp_path), "val", image_size=10)
    assert va.images.shape == (4, 3, 10, 10) and va.name.endswith(":val")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset(str(tmp_path / "empty"))
    _save(tmp_path / "ds" / "a" / "x.png", _rgb(0))
    (tmp_path / "ds" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*b has no images"):
        load_dataset(str(tmp_path / "ds"))


def test_truncated_jpeg_fail_or_skip(tmp_path):
    for i in range(5):
        _save(tmp_path / "a" / f"{i}.png", _rgb(i))
        _save(tmp_path / "b" / f"{i}.png", _rgb(10 + i))
    buf = io.BytesIO()
    _rgb(99, (64, 64)).save(buf, "JPEG")
    bad = tmp_path / "b" / "bad.jpg"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"bad\.jpg.*--on-bad-image skip"):
        load_dataset(str(tmp_path), "all")
    ds = load_dataset(str(tmp_path), "all", on_bad_image="skip")
    assert len(ds) == 10 and ds.skipped == [str(bad)]


def test_imageset_fingerprint_and_validation():
    x = torch.zeros(4, 1, 3, 3, dtype=torch.uint8)
    a = ImageSet(x, torch.arange(4), ["0", "1", "2", "3"], "a")
    assert a.fingerprint() == ImageSet(x.clone(), torch.arange(4), list(a.classes), "b").fingerprint()
    y = x.clone()
    y[2, 0, 1, 1] = 1
    assert ImageSet(y, torch.arange(4), a.classes, "a").fingerprint() != a.fingerprint()
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(x.float(), torch.arange(4), a.classes, "a")


def test_val_labels_follow_train_classes(tmp_path):
    for c in ("a", "b", "c"):
        _save(tmp_path / "train" / c / "x.png", Image.new("L", (4, 4), 1))
    _save(tmp_path / "val" / "c" / "y.png", Image.new("L", (4, 4), 2))
    va = load_dataset(str(tmp_path), "val")
    assert va.classes == ["a", "b", "c"] and va.labels.tolist() == [2]
    _save(tmp_path / "val" / "zebra" / "z.png", Image.new("L", (4, 4), 2))
    with pytest.raises(ValueError, match="zebra"):
        load_dataset(str(tmp_path), "val")
    (tmp_path / "val").rename(tmp_path / "other")
    with pytest.raises(ValueError, match="no val/"):
        load_dataset(str(tmp_path), "train")


def test_image_helpers_are_public_for_stream_and_predict(tmp_path):
    from ghostnetv3.data.datasets import class_folders, decode_image, short_side_center_crop, to_chw

    for name in ("b", "a", ".hidden"):
        (tmp_path / "set" / name).mkdir(parents=True)
    assert class_folders(tmp_path / "set") == ["a", "b"]
    with pytest.raises(ValueError, match="has no class folders"):
        class_folders(tmp_path / "set" / "a")
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    a = decode_image(tmp_path / "red.png")
    assert a.shape == (4, 6, 3) and a.dtype == np.uint8
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert isinstance(decode_image(tmp_path / "bad.png"), Exception)  # returned, not raised
    gray = to_chw(a, 1)
    assert gray.shape == (1, 4, 6) and int(gray[0, 0, 0]) == round(200 * 0.299)  # ITU-R 601 luma
    assert to_chw(a[..., 0], 3).shape == (3, 4, 6)  # gray replicated for a colour model
    assert short_side_center_crop(to_chw(a, 3), 2).shape == (3, 2, 2)
