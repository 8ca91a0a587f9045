"""The streaming data path (`--data-mode stream`): images read one at a time from a folder or a tar
through timm transforms in DataLoader workers — same images/labels/order as the in-memory path,
exact resume, bad files named or skipped, iterable sources need --train-num-samples."""
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from engine_helpers import assert_same_state, load
from ghostnetv3.data import InMemoryLoader, load_dataset
from ghostnetv3.data.stream import (PerSampleLoader, SeededTransformDataset, choose_data_mode, open_stream_set,
                                    shard_order)
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.config import TrainConfig
from ghostnetv3.engine.datasets import load_datasets
from ghostnetv3.engine.train import train

CLASSES = ("ant", "bee", "cat")


def write_folder(root, n_train=12, n_val=4, size=20, gray=False):
    """root/train/<class>/*.png|jpg and root/val/<class>/*.png, seeded pixels (class-dependent mean)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                shape = (size, size) if gray else (size, size, 3)
                a = np.clip(rng.normal(60 + 60 * c, 40, shape), 0, 255).astype(np.uint8)
                # PNG is lossless (stream and memory must match pixel for pixel); a few JPEGs too
                ext = "jpg" if (i % 4 == 3 and split == "train") else "png"
                Image.fromarray(a).save(d / f"{i:03d}.{ext}")
    return root


def cfg_for(tmp_path, data, **kw):
    base = dict(model="test_efficientnet", data=str(data), data_mode="stream", img_size=16, crop_mode="rrc",
                scale=(0.5, 1.0), batch_size=8, epochs=2, lr=0.05, warmup_epochs=0, model_ema_decay=0.9,
                log_interval=1, seed=3, in_chans=3, channels_last=False,  # pinned: see engine_helpers.TINY
                output=str(tmp_path / "runs"), experiment="run")
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "imgs")


def test_stream_trains_and_writes_checkpoints(tmp_path, folder, capsys, monkeypatch):
    cfg = cfg_for(tmp_path, folder, aa="rand-m9-mstd0.5", reprob=0.25, color_jitter=0.4)
    s = train(cfg.replace(epochs=1))
    run = tmp_path / "runs" / "run"
    assert (run / ckpt_io.LAST).exists() and (run / ckpt_io.BEST).exists()
    last = load(run / ckpt_io.LAST)
    assert last["global_step"] == 36 // 8 and last["classes"] == list(CLASSES)
    assert 0 <= s["val_top1"] <= 100 and np.isfinite(s["train_loss"])
    assert "36 train / 12 val images" in capsys.readouterr().out
    # `ghostnetv3 eval` reads the run's data the way it trained: streamed, never decoded whole
    import ghostnetv3.data
    from ghostnetv3.engine.evaluate import evaluate_checkpoint

    def no_decoding(*a, **k):
        raise AssertionError("eval decoded the dataset into memory")

    monkeypatch.setattr(ghostnetv3.data, "load_dataset", no_decoding)
    r = evaluate_checkpoint(run / ckpt_io.LAST, weights="ema")
    assert r["n"] == 12 and r["fused"]["top1"] == pytest.approx(s["ema_top1"])


def test_stream_and_memory_read_the_same_images_labels_and_order(tmp_path, folder):
    for split in ("train", "val"):
        mem = load_dataset(str(folder), split)
        st = open_stream_set(str(folder), split)
        assert st.classes == mem.classes and torch.equal(st.labels, mem.labels)
        raw = SeededTransformDataset(st.read, None, seed=0, in_chans=3, name=st.file_name)
        for i in range(len(st)):
            x, y, idx, err = raw[(i, 0)]
            assert err is None and y == int(mem.labels[i]) and torch.equal(x, mem.images[i]), (split, i)
    # one folder of class folders: the same seeded stratified split; gray stays 1 channel
    write_folder(tmp_path / "gray", n_val=0, gray=True)
    flat = tmp_path / "gray" / "train"
    mem = load_dataset(str(flat), "val", seed=5, val_fraction=0.25)
    st = open_stream_set(str(flat), "val", seed=5, val_fraction=0.25)
    assert torch.equal(st.labels, mem.labels) and mem.images.shape[1] == 1
    raw = SeededTransformDataset(st.read, None, seed=0, in_chans=1)
    assert all(torch.equal(raw[(i, 0)][0], mem.images[i]) for i in range(len(st)))
    # the per-epoch order over ranks is InMemoryLoader's
    mem = load_dataset(str(folder), "train")
    for rank in (0, 1):
        ref = InMemoryLoader(mem, 4, None, shuffle=True, drop_last=True, seed=9, rank=rank, world_size=2)
        assert torch.equal(shard_order(len(mem), 3, seed=9, rank=rank, world_size=2), ref.rank_indices(3))


def test_per_sample_augmentation_ignores_workers_and_start_batch(folder):
    from ghostnetv3.data import AugConfig, timm_transform
    st = open_stream_set(str(folder), "train")
    tf = timm_transform(AugConfig(16, reprob=0.5), auto_augment="rand-m9-mstd0.5")
    ds = SeededTransformDataset(st.read, tf, seed=1, name=st.file_name)
    mk = lambda w: PerSampleLoader(ds, len(st), 8, shuffle=True, drop_last=True, seed=1, workers=w)  # noqa: E731
    a, b = mk(0), mk(2)
    a.set_epoch(1), b.set_epoch(1)
    full = [x.images for x in a.iter_from(0)]
    resumed = [x.images for x in b.iter_from(2)]
    assert len(resumed) == len(full) - 2 and all(torch.equal(p, q) for p, q in zip(resumed, full[2:]))
    a.set_epoch(2)
    assert not torch.equal(next(a.iter_from(0)).images, full[0])  # a new epoch draws anew


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    folder = write_folder(tmp / "imgs")
    train(cfg_for(tmp, folder, experiment="ref", checkpoint_interval=2))
    return folder, load(tmp / "runs" / "ref" / ckpt_io.LAST)


@pytest.mark.parametrize("where", ["epoch-boundary", "mid-epoch"])
def test_stream_resume_is_exact(tmp_path, unbroken, monkeypatch, where):
    folder, ref = unbroken

    real_save = ckpt_io.atomic_save

    def crash_after_first(obj, path):  # a kill right after the wanted checkpoint reached the disk
        real_save(obj, path)
        if path.name == ckpt_io.LAST and (obj["step"] == 0) == (where == "epoch-boundary"):
            raise _Crash(f"killed after epoch {obj['epoch']} step {obj['step']}")

    monkeypatch.setattr(ckpt_io, "atomic_save", crash_after_first)
    cfg = cfg_for(tmp_path, folder, experiment="cut", checkpoint_interval=2)
    with pytest.raises(_Crash):
        train(cfg)
    monkeypatch.setattr(ckpt_io, "atomic_save", real_save)
    cut = load(tmp_path / "runs" / "cut" / ckpt_io.LAST)
    assert 0 < cut["global_step"] < ref["global_step"] and (cut["step"] == 0) == (where == "epoch-boundary")
    # workers is how to run, not what to compute: the resumed half reads with 2 worker processes
    train(cfg.replace(resume=str(tmp_path / "runs" / "cut"), workers=2, experiment=None))
    out = load(tmp_path / "runs" / "cut" / ckpt_io.LAST)
    assert out["global_step"] == ref["global_step"]
    assert_same_state(out["state_dict"], ref["state_dict"])
    assert_same_state(out["state_dict_ema"], ref["state_dict_ema"])


def test_corrupt_file_is_named_or_skipped_and_counted(tmp_path, folder, capsys):
    bad = folder / "train" / "bee" / "zz_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"cannot decode image .*zz_bad\.png.*--on-bad-image skip") as e:
        train(cfg_for(tmp_path, folder, epochs=1, experiment="fail"))
    assert "\n" not in str(e.value)
    s = train(cfg_for(tmp_path, folder, epochs=1, experiment="skip", on_bad_image="skip"))
    out = capsys.readouterr().out
    assert "skipped unreadable image" in out and "zz_bad.png" in out
    assert "1 unreadable images skipped this pass (1 in all" in out
    assert s["global_step"] == 37 // 8  # the batch holding it is refilled from itself; steps unchanged
    bad.unlink()
    st = open_stream_set(str(folder), "train")
    (folder / "train" / "ant" / "000.png").write_bytes(b"truncated")
    ds = SeededTransformDataset(st.read, None, seed=0, name=st.file_name)
    ld = PerSampleLoader(ds, len(st), 36, shuffle=False, drop_last=True, on_bad_image="skip", verbose=False)
    (batch,) = list(ld)
    assert batch.images.shape[0] == 36 and 0 not in batch.indices.tolist() and len(ld.skipped) == 1


def test_tar_file_streams_with_folder_labels(tmp_path, folder):
    tar = tmp_path / "train.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted((folder / "train").rglob("*.*")):
            tf.add(p, arcname=str(p.relative_to(folder / "train")))
    assert choose_data_mode(str(tar), "auto")[0] == "stream"
    st = open_stream_set(str(tar), "train")
    fold = open_stream_set(str(folder), "train")
    assert st.classes == fold.classes and sorted(st.labels.tolist()) == sorted(fold.labels.tolist())
    ds = SeededTransformDataset(st.read, None, seed=0, name=st.file_name)
    names = [st.file_name(i).split(":", 1)[1] for i in range(len(st))]
    mem = load_dataset(str(folder), "train")
    ref = {str(p.relative_to(folder / "train")): i
           for i, p in enumerate(sorted(q for q in (folder / "train").rglob("*.*")))}
    for i, n in enumerate(names):
        if n.endswith(".png"):
            assert torch.equal(ds[(i, 0)][0], mem.images[ref[n]]), n


def test_auto_mode_estimates_and_says_so(tmp_path, folder, capsys):
    assert choose_data_mode(str(folder), "auto")[0] == "memory"
    mode, why = choose_data_mode(str(folder), "auto", limit_gb=1e-6)
    assert mode == "stream" and "36 images" in why and "\n" not in why
    train_set, _ = load_datasets(cfg_for(tmp_path, folder, data_mode="auto", data_memory_limit_gb=1e-6))
    assert getattr(train_set, "streaming", False) and "streaming from disk" in capsys.readouterr().out
    assert choose_data_mode("fashion-mnist", "auto") == ("memory", None)
    with pytest.raises(ValueError, match="use --data-mode stream"):
        choose_data_mode("wds/some-shards", "memory")


def test_iterable_source_needs_train_num_samples(tmp_path):
    cfg = cfg_for(tmp_path, "wds/imagenet-shards", data_mode="auto", num_classes=1000)
    with pytest.raises(ValueError, match=r"pass --train-num-samples N") as e:
        load_datasets(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="pass --num-classes N"):
        load_datasets(cfg.replace(num_classes=None, train_num_samples=1000))


class FakeShards(torch.utils.data.IterableDataset):
    """Stands in for timm's webdataset reader (not installed here): a seeded order per epoch, split
    over workers, the transform applied to PIL images as timm's IterableImageDataset does."""

    def __init__(self, n, transform, split):
        self.n, self.transform, self.split, self.epoch = n, transform, split, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        info = torch.utils.data.get_worker_info()
        if info is not None:
            order = order[info.id::info.num_workers]
        for i in order:
            a = np.full((20, 20, 3), 40 * (i % 3) + i, np.uint8)
            yield self.transform(Image.fromarray(a)), i % 3


def test_iterable_source_trains_for_train_num_samples_and_resumes_in_order(tmp_path, monkeypatch):
    import ghostnetv3.data.timm_transforms as tc
    monkeypatch.setattr(tc, "load_streaming_dataset",
                        lambda name, split, transform, **kw: FakeShards(20 if split == "train" else 7, transform, split))
    cfg = cfg_for(tmp_path, "wds/fake-shards", train_num_samples=20, num_classes=3, epochs=1)
    s = train(cfg)
    assert s["global_step"] == 20 // 8 and 0 <= s["val_top1"] <= 100
    from ghostnetv3.engine.loaders import stream_loader
    train_set, _ = load_datasets(cfg)
    ld = stream_loader(cfg, train_set, 3, torch.device("cpu"), train=True)
    ld.set_epoch(1)
    full = [b.images for b in ld.iter_from(0)]
    rest = [b.images for b in ld.iter_from(1)]
    assert len(full) == 2 and len(rest) == 1 and torch.equal(rest[0], full[1])
