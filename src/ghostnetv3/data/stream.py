"""Streaming data: images read and augmented one at a time in DataLoader workers, for datasets too
big to hold in memory (ImageNet folders, tar files, timm's `hfds/`, `wds/`, ... readers).

    train = open_stream_set("/data/imagenet", "train")            # lists files, decodes nothing
    loader = PerSampleLoader(train, timm_transform(cfg), 256, shuffle=True, drop_last=True,
                             seed=0, workers=8, on_bad_image="skip")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels, indices, keys in loader.iter_from(0): ...

Exactness, as the in-memory path has it: the order of epoch e is the same seeded permutation, split
over ranks, as `InMemoryLoader` (so both paths see the same images in the same order), and every
random draw of sample i's transform (Python `random`, NumPy, torch CPU) is seeded from
(seed, e, i) inside `__getitem__`, so a sample's augmentation does not depend on the worker that
ran it, the worker count, or whether the epoch was resumed mid-way (`iter_from(k)` skips k
batches without reading them). Iterable sources (`wds/`, `hfids/`, `tfds/`) have no index: their
order is the reader's (seeded by epoch), augmentation is seeded by (seed, epoch, rank, worker,
position), and a mid-epoch resume reads and drops the batches already seen.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import random
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from timm.data.readers import create_reader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from . import timm_transforms
from .datasets import IMG_EXTENSIONS, class_folders, decode_image, shown, stratified_split, to_uint8
from .loader import Batch, shard_order

__all__ = ["FACTORY_PREFIXES", "ITERABLE_PREFIXES", "StreamSet", "IterableStreamSet", "PerSampleLoader",
           "IterableLoader", "SeededTransformDataset", "choose_data_mode", "open_stream_set", "shard_order",
           "is_iterable_source"]

# timm create_dataset prefixes we pass through; the iterable ones have no length or index
FACTORY_PREFIXES = ("hfds/", "hfids/", "wds/", "tfds/")
ITERABLE_PREFIXES = ("hfids/", "wds/", "tfds/")


def is_factory_source(data: str) -> bool:
    """A timm reader name or a .tar file: never decoded whole into memory."""
    return data.lower().startswith(FACTORY_PREFIXES) or (data.lower().endswith(".tar") and os.path.isfile(data))


def is_iterable_source(data: str) -> bool:
    return data.lower().startswith(ITERABLE_PREFIXES)


# ---- memory or stream ----------------------------------------------------------------------------
def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def choose_data_mode(data: str, mode: str, *, seed: int = 0, val_fraction: float = 0.2,
                     limit_gb: float | None = None) -> tuple[str, str | None]:
    """("memory" | "stream", a one-line reason or None) for data_mode memory|stream|auto.

    auto streams timm-factory names and .tar files, and an ImageFolder whose decoded size would
    exceed `limit_gb` (None: a quarter of RAM). The in-memory loader holds every full-size decoded
    image before resizing, so the estimate is file count x the mean decoded size of up to 16 files.
    """
    if mode not in ("memory", "stream", "auto"):
        raise ValueError(f"data_mode={mode!r}; use 'memory', 'stream' or 'auto'")
    if mode == "memory" and is_factory_source(data):
        raise ValueError(f"{data} is read by timm's dataset factory one sample at a time; "
                         f"use --data-mode stream (or auto)")
    if mode != "auto":
        return mode, None
    if is_factory_source(data):
        return "stream", f"data: {data} is a timm reader / tar source -> streaming (data_mode=auto)"
    root = Path(data)
    if not root.is_dir():  # fashion-mnist, elpv, or an error the memory loader words
        return "memory", None
    files, _, _, _ = list_folder(root, "train", seed, val_fraction)
    sample = files[np.linspace(0, len(files) - 1, min(16, len(files))).astype(int)]
    sizes = []
    for f in sample:
        try:
            with Image.open(os.fsdecode(f)) as im:
                sizes.append(im.size[0] * im.size[1] * (1 if im.mode in ("1", "L", "P", "I;16") else 3))
        except Exception:  # a bad file: the loaders report it
            continue
    est = len(files) * (float(np.mean(sizes)) if sizes else 3 * 224 * 224)
    limit = (limit_gb * 1e9) if limit_gb is not None else _ram_bytes() / 4
    chosen = "stream" if est > limit else "memory"
    how = "streaming from disk" if chosen == "stream" else "decoding into memory"
    return chosen, (f"data: {root} train split has {len(files):,} images, ~{est / 1e9:.2f} GB decoded "
                    f"{'>' if chosen == 'stream' else '<='} limit {limit / 1e9:.1f} GB -> {how} "
                    f"(data_mode=auto; --data-mode memory|stream forces one, --data-memory-limit-gb moves the limit)")


# ---- sources -------------------------------------------------------------------------------------
def list_folder(root: Path, split: str, seed: int, val_fraction: float):
    """(files as bytes array, labels, classes, name) of a split, laid out as `load_dataset` reads it."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {shown(root)} does not exist; pass a folder of class folders "
                                f"(optionally under train/ and val/)")
    val_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
    if (root / "train").is_dir():
        if val_dir is None:
            raise ValueError(f"{shown(root)} has train/ but no val/ or validation/ folder; add one, or point "
                             f"at {shown(root / 'train')} to split it by seed")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r}; {shown(root)} has 'train' and 'val' folders")
        classes = class_folders(root / "train")  # train/ defines the label indices
        d = {"train": root / "train", "val": val_dir,
             "test": root / "test" if (root / "test").is_dir() else val_dir}[split]
        if split != "train":
            extra = sorted(set(class_folders(d)) - set(classes))
            if extra:
                raise ValueError(f"{shown(d)} has class folders not in {shown(root / 'train')}: "
                                 f"{[shown(e) for e in extra[:5]]}; add them to train/ or remove them")
        files, labels = _list_classes(d, classes, allow_missing=split != "train")
        return files, labels, [shown(c) for c in classes], f"{shown(root.name)}:{split}"
    classes = class_folders(root)
    files, labels = _list_classes(root, classes)
    if split == "all":
        return files, labels, [shown(c) for c in classes], f"{shown(root.name)}:all"
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}; use 'train', 'val' (= 'test' here) or 'all'")
    # the in-memory loader splits after dropping unreadable files: identical when none is bad
    tr, va = stratified_split(labels, val_fraction, seed)
    part = tr if split == "train" else va
    return files[part.numpy()], labels[part], [shown(c) for c in classes], f"{shown(root.name)}:{split}"


def _list_classes(root: Path, classes: list[str], allow_missing: bool = False):
    files, labels = [], []
    for c, cls in enumerate(classes):
        d = root / cls
        if not d.is_dir() and allow_missing:
            continue
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not found:
            raise ValueError(f"class folder {shown(d)} has no images ({', '.join(IMG_EXTENSIONS)}); "
                             f"add images or remove the folder")
        files += [os.fsencode(p) for p in found]  # the name's own bytes: not every name is UTF-8
        labels += [c] * len(found)
    # a bytes array, not a list of str: forked workers do not copy it page by page on refcounting
    return np.array(files, dtype=np.bytes_), torch.tensor(labels, dtype=torch.int64)


class _FolderReader:
    def __init__(self, files: np.ndarray):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        return shown(self.files[i])

    def read(self, i: int) -> np.ndarray:
        res = decode_image(Path(os.fsdecode(self.files[i])))  # the in-memory path's decoder: same pixels
        if isinstance(res, Exception):
            raise res
        return res


class _TimmReader:
    """A map-style timm reader (image-in-tar, hfds); re-opens its files after a fork."""

    def __init__(self, reader, root: str):
        self.reader, self.root, self._pid = reader, root, os.getpid()

    def __len__(self) -> int:
        return len(self.reader)

    def name(self, i: int) -> str:
        try:
            return f"{self.root}:{self.reader._filename(i)}"
        except Exception:
            return f"{self.root}[{i}]"

    def read(self, i: int) -> np.ndarray:
        if os.getpid() != self._pid:  # tar handles opened before the fork share a file offset
            states = [getattr(self.reader, "tar_state", None)]
            if isinstance(states[0], dict):
                states = list(states[0].values())
            for s in states:
                if s is not None and hasattr(s, "reset"):
                    s.reset()
                    for c in getattr(s, "children", {}).values():
                        c.reset()
            self._pid = os.getpid()
        obj = self.reader[i][0]
        if isinstance(obj, (bytes, bytearray)):
            obj = io.BytesIO(obj)
        with (obj if isinstance(obj, Image.Image) else Image.open(obj)) as im:
            im.load()
            return to_uint8(im)


class StreamSet:
    """A split listed, not decoded: what the engine needs of an ImageSet (labels, classes, subset)."""

    streaming = True
    iterable = False

    def __init__(self, reader, labels: Tensor, classes: list[str], name: str, index: Tensor | None = None):
        self.reader, self.labels, self.classes, self.name = reader, labels, list(classes), name
        self.index = torch.arange(len(labels)) if index is None else index  # positions in the reader
        self.skipped: list[str] = []  # unreadable files met so far (on_bad_image="skip")

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return f"StreamSet({self.name!r}, n={len(self)}, classes={len(self.classes)})"

    def subset(self, indices, name: str | None = None) -> "StreamSet":
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return StreamSet(self.reader, self.labels[idx], self.classes, name or f"{self.name}[{len(idx)}]",
                         self.index[idx])

    def file_name(self, i: int) -> str:
        return self.reader.name(int(self.index[i]))

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """HxW or HxWx3 uint8 (as `load_dataset` decodes it) and the label."""
        return self.reader.read(int(self.index[i])), int(self.labels[i])


class IterableStreamSet:
    """A timm iterable source (wds/, hfids/, tfds/): no index, no length but the one you give."""

    streaming = True
    iterable = True

    def __init__(self, name: str, split: str, num_samples: int | None, num_classes: int, root: str | None = None):
        self.name, self.split, self.num_samples, self.root = name, split, num_samples, root
        self.classes = [str(i) for i in range(num_classes)]
        self.labels = None
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return int(self.num_samples or 0)

    def __repr__(self) -> str:
        return f"IterableStreamSet({self.name!r}, split={self.split!r}, num_samples={self.num_samples})"


def open_stream_set(data: str, split: str = "train", *, seed: int = 0, val_fraction: float = 0.2,
                    num_samples: int | None = None, num_classes: int | None = None):
    """A StreamSet (folders, .tar, hfds/) or IterableStreamSet (wds/, hfids/, tfds/) of one split."""
    if is_iterable_source(data):
        if split == "train" and not num_samples:
            raise ValueError(f"{data} is an iterable source with no known length; pass --train-num-samples N "
                             f"(images per epoch) so the schedule knows its steps per epoch")
        if not num_classes:
            raise ValueError(f"{data} does not list its classes; pass --num-classes N")
        return IterableStreamSet(data, "train" if split == "train" else "validation", num_samples, num_classes)
    if data.lower().startswith("hfds/") or (data.lower().endswith(".tar") and os.path.isfile(data)):
        name, root = (data, None) if data.lower().startswith("hfds/") else ("", data)
        timm_split = "train" if split == "train" else "validation"
        reader = create_reader(name, root=root, split=timm_split)
        targets = getattr(reader, "targets", None)
        if targets is None:
            raise ValueError(f"{data}: timm's reader gives no label list for a seeded order; "
                             f"convert it to a folder or tar, or use an iterable source")
        labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        c2i = getattr(reader, "class_name_to_idx", None) or {}
        classes = [k for k, _ in sorted(c2i.items(), key=lambda kv: kv[1])] or \
            [str(i) for i in range(num_classes or int(labels.max()) + 1)]
        return StreamSet(_TimmReader(reader, data), labels, classes, f"{Path(data).name}:{split}")
    files, labels, classes, name = list_folder(Path(data), split, seed, val_fraction)
    return StreamSet(_FolderReader(files), labels, classes, name)


# ---- per-sample seeded transforms ----------------------------------------------------------------
def _mix(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@contextlib.contextmanager
def _seeded(seed: int):
    """Python/NumPy/torch-CPU global RNGs seeded for one sample, restored afterwards (so the
    training process's own streams — dropout, Mixup — are untouched when workers=0)."""
    worker = torch.utils.data.get_worker_info() is not None  # a worker's streams serve only samples
    if not worker:
        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # CPU only: CUDA streams stay the training loop's
    try:
        yield
    finally:
        if not worker:
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)


def to_mode(a: np.ndarray | Image.Image, in_chans: int) -> Image.Image:
    """PIL image with in_chans channels: gray replicated to 3, RGB to luma (ITU-R 601) for 1."""
    im = a if isinstance(a, Image.Image) else Image.fromarray(a, "L" if a.ndim == 2 else "RGB")
    mode = "RGB" if in_chans == 3 else "L"
    return im if im.mode == mode else im.convert(mode)


class SeededTransformDataset(Dataset):
    """dataset[(i, key)] -> (transformed sample i, label, i, error): the transform's randomness is a
    pure function of (seed, key, i). `read(i)` gives (HxW[x3] uint8 array or PIL image, label);
    an unreadable sample comes back as (None, label, i, "file: error") for the loader to report.
    transform=None returns the uint8 CHW tensor (what `load_dataset` would hold, unresized)."""

    def __init__(self, read: Callable, transform: Callable | None, *, seed: int, in_chans: int = 3,
                 name: Callable[[int], str] | None = None):
        self.read, self.transform, self.seed, self.in_chans, self.name = read, transform, int(seed), in_chans, name

    def __getitem__(self, key):
        i, k = key
        try:
            a, label = self.read(i)
        except Exception as e:  # PIL raises many types for bad files
            where = self.name(i) if self.name else f"sample {i}"
            return None, -1, i, f"{where} ({type(e).__name__}: {e})"
        img = to_mode(a, self.in_chans)
        if self.transform is None:
            t = torch.from_numpy(np.array(img, copy=True))
            return (t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()), label, i, None
        with _seeded(_mix(self.seed, k, i)):
            return self.transform(img), label, i, None


def _collate(items):
    good = [it for it in items if it[0] is not None]
    bad = [it[3] for it in items if it[0] is None]
    if not good:
        return None, None, None, bad
    return (torch.stack([it[0] for it in good]), torch.tensor([it[1] for it in good], dtype=torch.int64),
            torch.tensor([it[2] for it in good], dtype=torch.int64), bad)


class PerSampleLoader:
    """Batches of a map-style SeededTransformDataset in the seeded per-epoch order, through a torch
    DataLoader with `workers` processes; the InMemoryLoader interface (set_epoch, iter_from, len).

    Unreadable samples: on_bad_image="fail" raises naming the file; "skip" drops them from their
    batch, adds them to `skipped` and says so; a training batch (drop_last) is then refilled with
    repeats of its own samples, an evaluation batch comes out smaller."""

    def __init__(self, dataset: SeededTransformDataset, n: int, batch_size: int, *, shuffle: bool,
                 drop_last: bool, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 device: str | torch.device = "cpu", channels_last: bool = False, on_bad_image: str = "fail",
                 skipped: list[str] | None = None, fixed_key: int | None = None, verbose: bool = True):
        if on_bad_image not in ("fail", "skip"):
            raise ValueError(f"on_bad_image={on_bad_image!r}; use 'fail' or 'skip'")
        self.dataset, self.n, self.batch_size = dataset, int(n), int(batch_size)
        self.shuffle, self.drop_last, self.seed, self.rank, self.world_size = shuffle, drop_last, seed, rank, world_size
        self.workers, self.device, self.channels_last = int(workers), torch.device(device), channels_last
        self.on_bad_image, self.fixed_key, self.verbose = on_bad_image, fixed_key, verbose
        self.skipped = skipped if skipped is not None else []
        self.epoch = 0
        self.num_samples = len(self.rank_indices(0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples // self.batch_size if self.drop_last else math.ceil(self.num_samples / self.batch_size)

    def rank_indices(self, epoch: int | None = None) -> Tensor:
        return shard_order(self.n, self.epoch if epoch is None else epoch, seed=self.seed, rank=self.rank,
                           world_size=self.world_size, shuffle=self.shuffle, drop_last=self.drop_last)

    def iter_from(self, start_batch: int) -> Iterator[Batch]:
        """Batches start_batch.. of the current epoch, identical to a full iteration's."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch={start_batch} outside 0..{len(self)}")
        idx = self.rank_indices()[start_batch * self.batch_size:len(self) * self.batch_size]
        key = self.epoch if self.fixed_key is None else self.fixed_key
        dl = DataLoader(self.dataset, batch_size=self.batch_size, sampler=[(int(i), key) for i in idx],
                        drop_last=False, num_workers=self.workers, collate_fn=_collate,
                        pin_memory=self.device.type == "cuda", persistent_workers=False)
        return self._batches(dl, start_batch, key)

    def _batches(self, dl, start_batch: int, key: int) -> Iterator[Batch]:
        new = 0
        for b, (x, y, rows, bad) in enumerate(dl, start=start_batch):
            for msg in bad:
                if self.on_bad_image == "fail":
                    raise ValueError(f"cannot decode image {msg}; fix or delete it, or pass --on-bad-image skip")
                if msg not in self.skipped:
                    self.skipped.append(msg)
                    new += 1
                    if self.verbose and len(self.skipped) <= 10:
                        print(f"warning: skipped unreadable image {msg} ({len(self.skipped)} so far)", flush=True)
            if x is None:
                raise ValueError(f"batch {b + 1} of epoch {self.epoch + 1} has no readable image "
                                 f"(e.g. {bad[0]}); remove the bad files")
            if self.drop_last and x.shape[0] < self.batch_size:  # training: refill from the batch itself,
                fill = torch.arange(self.batch_size) % x.shape[0]  # so Mixup and DDP see full batches
                x, y, rows = x[fill], y[fill], rows[fill]
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, y.to(self.device), rows, torch.full_like(rows, key))
        if new and self.verbose:
            print(f"data: {new} unreadable images skipped this pass ({len(self.skipped)} in all, "
                  f"on_bad_image=skip)", flush=True)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


# ---- iterable timm sources -----------------------------------------------------------------------
class _IterTransform:
    """Per-sample seeding for iterable sources: key (seed, epoch, rank, worker, position)."""

    def __init__(self, transform: Callable, seed: int, rank: int, in_chans: int):
        self.transform, self.seed, self.rank, self.in_chans = transform, seed, rank, in_chans
        self.epoch, self.count = 0, 0

    def __call__(self, img):
        info = torch.utils.data.get_worker_info()
        self.count += 1
        with _seeded(_mix(self.seed, self.epoch, self.rank, info.id if info else 0, self.count)):
            return self.transform(to_mode(img, self.in_chans))


class IterableLoader:
    """Batches from a timm iterable source (wds/, hfids/, tfds/). len = num_samples // global batch
    for training; evaluation reads the split once to its end."""

    def __init__(self, ds: IterableStreamSet, transform: Callable, batch_size: int, *, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, device: str | torch.device = "cpu",
                 channels_last: bool = False, in_chans: int = 3):
        self.ds, self.batch_size, self.train, self.workers = ds, int(batch_size), train, int(workers)
        self.device, self.channels_last, self.epoch = torch.device(device), channels_last, 0
        self.tf = _IterTransform(transform, seed, rank, in_chans)
        self.skipped = ds.skipped
        self.dataset = timm_transforms.load_streaming_dataset(
            ds.name, ds.split, self.tf, root=ds.root, is_training=train, batch_size=self.batch_size, seed=seed,
            num_samples=ds.num_samples, input_img_mode="RGB" if in_chans == 3 else "L")
        if hasattr(self.dataset, "set_loader_cfg"):
            self.dataset.set_loader_cfg(num_workers=self.workers)
        self.steps = (ds.num_samples // (self.batch_size * world_size)) if train else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an iterable evaluation source has no length")
        return self.steps

    def iter_from(self, start_batch: int) -> Iterator[Batch]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        self.tf.epoch, self.tf.count = self.epoch, 0  # copied into workers when the iterator starts
        dl = DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.workers, drop_last=self.train,
                        pin_memory=self.device.type == "cuda", persistent_workers=False)
        for b, (x, y) in enumerate(dl):
            if self.steps is not None and b >= self.steps:
                break
            if b < start_batch:  # already trained on: read (the reader's order) and dropped
                continue
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            rows = torch.full((y.shape[0],), -1, dtype=torch.int64)
            yield Batch(x, y.to(self.device), rows, torch.full_like(rows, self.epoch))

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)
