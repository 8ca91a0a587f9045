"""Whole datasets decoded into uint8 tensors, resolved offline.

`load_dataset(name_or_path, split)` understands:
- "fashion-mnist": the idx .gz files of Debian's `dataset-fashion-mnist`
  (/usr/share/datasets/fashion-mnist, or $GHOSTNETV3_DATA_DIR[/fashion-mnist]); "train" = 60k,
  "val"/"test" = the official 10k test set.
- "elpv": PyPI `elpv-dataset`, 2,624 300x300 gray solar cells, 4 classes by defect probability
  (p0, p33, p67, p100). No official split: a stratified split fixed by `seed`, with
  `val_fraction` defaulting to 0.25; "val" and "test" both name the held-out part, "all" all.
- a folder: `train/` + `val/` (or `validation/`; `test/` for split "test") of class folders, or
  one folder of class folders split like elpv (val_fraction default 0.2).

Decoded elpv tensors are cached under $GHOSTNETV3_CACHE_DIR (default ~/.cache/ghostnetv3) as
plain tensors loaded with weights_only=True.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.datasets import FashionMNIST

__all__ = ["ImageSet", "load_dataset", "stratified_split", "cache_dir", "IMG_EXTENSIONS", "shown", "class_folders",
           "decode_image", "to_uint8", "to_chw", "short_side_center_crop"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
ELPV_CLASSES = ["p0", "p33", "p67", "p100"]
_DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass
class ImageSet:
    """A whole split, decoded, in memory."""

    images: Tensor  # uint8 [N, C, H, W], C = 1 (gray) or 3
    labels: Tensor  # int64 [N]
    classes: list[str]
    name: str  # e.g. "fashion-mnist:train"
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (on_bad_image="skip")

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageSet.images must be uint8 [N, C, H, W], got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return (f"ImageSet({self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, "
                f"classes={len(self.classes)})")

    def fingerprint(self) -> str:
        """Short hex digest of the contents (shape, classes, labels, pixels)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(repr((tuple(self.images.shape), list(self.classes))).encode())
        h.update(self.labels.contiguous().numpy().tobytes())
        h.update(memoryview(self.images.contiguous().numpy()).cast("B"))
        return h.hexdigest()

    def subset(self, indices, name: str | None = None) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes),
                        name or f"{self.name}[{len(idx)}]", list(self.skipped))


def shown(path: str | os.PathLike | bytes) -> str:
    """A file or folder name as text that prints anywhere: bytes that are not UTF-8 (a Latin-1 name on
    a UTF-8 system) become backslash escapes (`caf\\xe9.png`) instead of failing to print."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def cache_dir() -> Path:
    return Path(os.environ.get("GHOSTNETV3_CACHE_DIR", Path.home() / ".cache" / "ghostnetv3"))


def load_dataset(name_or_path: str, split: str = "train", *, seed: int = 0,
                 val_fraction: float | None = None, on_bad_image: str = "fail",
                 image_size: int | None = None, in_chans: int | None = None) -> ImageSet:
    """Load a whole split into memory; see the module docstring for what names mean.

    val_fraction: for datasets without an official split (None: 0.25 for elpv, 0.2 for a folder).
    on_bad_image: "fail" raises on an unreadable image; "skip" leaves it out (ImageSet.skipped).
    image_size: resize at load (antialiased); a folder of mixed sizes needs it (shorter side to
    image_size, then a center square crop).
    in_chans: a folder's channels (1 gray, 3 color); None: what most of its images are (a few
    color files in a gray set are read as gray, and the other way round, with a note).
    """
    if on_bad_image not in ("fail", "skip"):
        raise ValueError(f"on_bad_image={on_bad_image!r}; use 'fail' or 'skip'")
    key = name_or_path.lower()
    if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        ds = _load_fashion_mnist(split)
        return _resize_set(ds, image_size) if image_size else ds
    if key == "elpv":
        return _load_elpv(split, seed, 0.25 if val_fraction is None else val_fraction, image_size)
    return _load_folder(Path(name_or_path), split, seed, 0.2 if val_fraction is None else val_fraction,
                        on_bad_image, image_size, in_chans)


# ---- splits -------------------------------------------------------------------------------------
def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train_idx, val_idx), sorted; each class contributes round(n_c * val_fraction) to val."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}; use a value strictly between 0 and 1")
    g = torch.Generator().manual_seed(int(seed))
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _pick_split(full: ImageSet, split: str, seed: int, val_fraction: float, base: str) -> ImageSet:
    if split == "all":
        return ImageSet(full.images, full.labels, full.classes, f"{base}:all", full.skipped)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}; use 'train', 'val' (= 'test' here) or 'all'")
    tr, va = stratified_split(full.labels, val_fraction, seed)
    part = tr if split == "train" else va
    return full.subset(part, f"{base}:{split}")


# ---- fashion-mnist ------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file; reinstall the dataset")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist_dir() -> Path:
    candidates = []
    if os.environ.get("GHOSTNETV3_DATA_DIR"):
        d = Path(os.environ["GHOSTNETV3_DATA_DIR"])
        candidates += [d / "fashion-mnist", d]
    candidates += [_DEBIAN_FMNIST, cache_dir() / "FashionMNIST" / "raw"]
    for d in candidates:
        if all((d / f).is_file() for pair in _FMNIST_FILES.values() for f in pair):
            return d
    if os.environ.get("GHOSTNETV3_OFFLINE", "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") == "1":
        raise FileNotFoundError(_FMNIST_MISSING)
    try:  # machines with internet: torchvision's downloader writes the same idx .gz files
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)
        try:
            FashionMNIST(str(cache_dir()), train=True, download=True)
            FashionMNIST(str(cache_dir()), train=False, download=True)
        finally:
            socket.setdefaulttimeout(old)
    except Exception as e:  # offline or blocked
        raise FileNotFoundError(f"{_FMNIST_MISSING} (download failed: {type(e).__name__})") from None
    return cache_dir() / "FashionMNIST" / "raw"


_FMNIST_MISSING = ("Fashion-MNIST not found in /usr/share/datasets/fashion-mnist or "
                   "$GHOSTNETV3_DATA_DIR: run `sudo apt-get install dataset-fashion-mnist` (or `make data`)")


def _load_fashion_mnist(split: str) -> ImageSet:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}; fashion-mnist has 'train' (60k) and 'val'/'test' (10k)")
    d = _fashion_mnist_dir()
    img_f, lab_f = _FMNIST_FILES["train" if split == "train" else "test"]
    images = torch.from_numpy(_read_idx(d / img_f).copy()).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(d / lab_f).astype(np.int64))
    return ImageSet(images, labels, list(FASHION_MNIST_CLASSES), f"fashion-mnist:{split}")


# ---- elpv ---------------------------------------------------------------------------------------
def _load_elpv(split: str, seed: int, val_fraction: float, image_size: int | None) -> ImageSet:
    try:
        import elpv_dataset  # lazy: optional extra (pip install -e '.[data]')
    except ImportError:
        raise ImportError("elpv needs the PyPI package: pip install elpv-dataset "
                          "(or pip install -e '.[data]')") from None
    root = Path(elpv_dataset.__file__).parent / "data"
    version = getattr(elpv_dataset, "__version__", "") or _dist_version("elpv-dataset")
    cache = cache_dir() / f"elpv-{version}-{image_size or 'full'}.pt"
    full = None
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            full = ImageSet(blob["images"], blob["labels"], list(ELPV_CLASSES), "elpv")
        except Exception:  # a stale or partial cache: rebuild it
            full = None
    if full is None:
        rows = [ln.split() for ln in (root / "labels.csv").read_text().splitlines() if ln.strip()]
        labels = torch.tensor([int(round(float(r[1]) * 3)) for r in rows], dtype=torch.int64)
        paths = [root / r[0] for r in rows]
        with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as ex:
            arrays = list(ex.map(lambda p: np.asarray(Image.open(p).convert("L")), paths))
        images = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
        if image_size:
            images = resize_u8(images, (image_size, image_size))
        full = ImageSet(images, labels, list(ELPV_CLASSES), "elpv")
        _save_cache(cache, {"images": images, "labels": labels})
    tag = f"elpv{'@' + str(image_size) if image_size else ''}"
    return _pick_split(full, split, seed, val_fraction, tag)


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except Exception:
        return "unknown"


def _save_cache(path: Path, blob: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the decode next time


# ---- resizing -----------------------------------------------------------------------------------
def resize_u8(images: Tensor, hw: tuple[int, int], chunk: int = 4096) -> Tensor:
    """Bilinear resize of a uint8 batch (antialiased when shrinking), in chunks to bound memory.

    Resizing is linear and separable, so it is two small matrix products, Ry @ x @ Rx^T, whose
    matrices are F.interpolate applied to identities: the same numbers as F.interpolate, but
    BLAS-fast on stacks of small images (F.interpolate was ~30x slower here on 1-channel images).
    """
    H, W = images.shape[-2:]
    if (H, W) == tuple(hw):
        return images
    ry, rx = _resize_matrix(H, hw[0]), _resize_matrix(W, hw[1])
    out = [(ry @ images[i:i + chunk].float() @ rx.T).round_().clamp_(0, 255).to(torch.uint8)
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


def _resize_matrix(n: int, m: int, rows: slice | None = None, chunk: int = 256) -> Tensor:
    """[m, n]: row i holds the weights of the n inputs in output i (bilinear, antialiased if m < n).

    F.interpolate of the identity, `chunk` columns at a time, keeping only output `rows`: memory
    ~ n x chunk, not n x n (an 8000 x 10 strip cropped to 32 px needed a 25600 x 8000 matrix).
    Chunks are at least 2 columns wide: torch's antialiased path mis-handles 1-pixel-wide inputs."""
    cols = []
    for j in range(0, n, chunk):
        hi = min(j + chunk, n)
        lo = j if hi - j >= 2 else max(0, hi - 2)
        eye = torch.zeros(n, hi - lo)
        eye[torch.arange(lo, hi), torch.arange(hi - lo)] = 1.0
        out = F.interpolate(eye[None, None], size=(m, hi - lo), mode="bilinear", align_corners=False,
                            antialias=m < n)[0, 0, :, j - lo:]
        cols.append(out if rows is None else out[rows].clone())  # clone: a view would keep all m rows alive
    return torch.cat(cols, dim=1)


def _resize_set(ds: ImageSet, size: int) -> ImageSet:
    if tuple(ds.images.shape[-2:]) == (size, size):
        return ds
    return ImageSet(resize_u8(ds.images, (size, size)), ds.labels, ds.classes, f"{ds.name}@{size}", ds.skipped)


# ---- image folders ------------------------------------------------------------------------------
def _load_folder(root: Path, split: str, seed: int, val_fraction: float, on_bad: str,
                 image_size: int | None, in_chans: int | None = None) -> ImageSet:
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {shown(root)} does not exist; pass 'fashion-mnist', 'elpv' "
                                f"or a folder of class folders (optionally under train/ and val/)")
    if not root.is_dir():
        raise NotADirectoryError(f"{shown(root)} is a file; pass a folder of class folders")
    split_dirs = {"train": root / "train"}
    for name in ("val", "validation"):
        if (root / name).is_dir():
            split_dirs["val"] = root / name
            break
    split_dirs["test"] = root / "test" if (root / "test").is_dir() else split_dirs.get("val")
    if split_dirs["train"].is_dir() and split_dirs.get("val") is not None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r}; {shown(root)} has 'train' and 'val' folders")
        classes = class_folders(split_dirs["train"])  # train/ defines the label indices
        d = split_dirs[split]
        if split != "train":
            extra = sorted(set(class_folders(d)) - set(classes))
            if extra:
                raise ValueError(f"{shown(d)} has class folders not in {shown(split_dirs['train'])}: "
                                 f"{[shown(e) for e in extra[:5]]}; add them to train/ or remove them")
        return _decode_folder(d, classes, on_bad, image_size, f"{shown(root.name)}:{split}",
                              allow_missing=split != "train", in_chans=in_chans)
    if split_dirs["train"].is_dir():
        raise ValueError(f"{shown(root)} has train/ but no val/ or validation/ folder; add one, or point "
                         f"at {shown(split_dirs['train'])} to split it by seed")
    classes = class_folders(root)
    full = _decode_folder(root, classes, on_bad, image_size, shown(root.name), in_chans=in_chans)
    out = _pick_split(full, split, seed, val_fraction, shown(root.name))
    out.skipped = list(full.skipped)
    return out


def class_folders(root: Path) -> list[str]:
    """The class names of an ImageFolder-style `root`: its sub-folders, sorted (hidden ones left out)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{shown(root)} has no class folders; put images in {shown(root)}/<class name>/")
    return classes


def _decode_folder(root: Path, classes: list[str], on_bad: str, image_size: int | None,
                   name: str, allow_missing: bool = False, in_chans: int | None = None) -> ImageSet:
    files, labels = [], []
    for c, cls in enumerate(classes):
        d = root / cls
        if not d.is_dir() and allow_missing:  # a val split may lack a class
            continue
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not found:
            raise ValueError(f"class folder {shown(d)} has no images ({', '.join(IMG_EXTENSIONS)}); "
                             f"add images or remove the folder")
        files += found
        labels += [c] * len(found)
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as ex:
        decoded = list(ex.map(decode_image, files))
    keep, skipped = [], []
    for i, (path, res) in enumerate(zip(files, decoded)):
        if isinstance(res, Exception):
            if on_bad == "fail":
                raise ValueError(f"cannot decode image {shown(path)} ({type(res).__name__}: {res}); fix or "
                                 f"delete it, or pass --on-bad-image skip (on_bad_image: skip in a recipe)")
            skipped.append(shown(path))
        else:
            keep.append(i)
    if not keep:
        raise ValueError(f"no readable images under {shown(root)}")
    arrays = [decoded[i] for i in keep]
    labels_t = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
    channels = _folder_channels(root, [files[i] for i in keep], arrays, in_chans)
    tensors = [to_chw(a, channels) for a in arrays]
    sizes = {tuple(t.shape[-2:]) for t in tensors}
    if image_size:
        tensors = [short_side_center_crop(t, image_size) for t in tensors]
    elif len(sizes) > 1:
        eg = sorted(sizes)[:2]
        raise ValueError(f"images under {shown(root)} have {len(sizes)} different sizes (e.g. {eg[0]} and "
                         f"{eg[1]}); pass image_size=N to resize them at load")
    return ImageSet(torch.stack(tensors), labels_t, [shown(c) for c in classes], name, skipped)


def _folder_channels(root: Path, files: list[Path], arrays: list[np.ndarray], in_chans: int | None) -> int:
    """1 or 3: `in_chans` when given, else what most images are. One RGBA or CMYK file in a gray set
    must not turn the whole set (and the model) into 3 channels; the minority is converted, and said."""
    color = [i for i, a in enumerate(arrays) if a.ndim == 3]
    n_color, n = len(color), len(arrays)
    channels = (1 if in_chans == 1 else 3) if in_chans else (3 if 2 * n_color >= n and n_color else 1)
    odd = color if channels == 1 else [i for i, a in enumerate(arrays) if a.ndim == 2]
    if odd and 0 < len(odd) < n and os.environ.get("RANK", "0") == "0":
        why = f"--in-chans {in_chans}" if in_chans else "most of them are"
        kind = "color" if channels == 1 else "gray"
        print(f"note: {len(odd)} of {n} images under {shown(root)} are {kind} (e.g. {shown(files[odd[0]])}); "
              f"the set is read as {'gray' if channels == 1 else 'color'} ({why})"
              + ("" if in_chans else f"; pass --in-chans {3 if channels == 1 else 1} to read it otherwise"),
              flush=True)
    return channels


def decode_image(path: Path) -> np.ndarray | Exception:
    """HxW (gray) or HxWx3 uint8; transparency composited on white; 16-bit scaled to 8."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files raise here, not later
            return to_uint8(im)
    except Exception as e:  # PIL raises many types for bad files
        return e


def to_uint8(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as HxW or HxWx3 uint8 (see `decode_image`)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("1", "L"):
        return np.asarray(im.convert("L"))
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        _check_finite(a)
        bits = _bit_depth(im)
        if bits > 8:  # by the file's bit depth, never by the image's own range (256 must stay darker than 257)
            a = a * (255.0 / (2 ** bits - 1))
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        bg = Image.new(im.mode, im.size, (255,) * len(im.mode))
        im = Image.alpha_composite(bg.convert("RGBA"), im.convert("RGBA"))
        im = im.convert("L" if mode in ("LA", "La") else "RGB")
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def _check_finite(a: np.ndarray) -> None:
    """A float image (32-bit TIFF) with NaN or infinite pixels: refused, not cast to 0 or clipped to 255
    (a sensor's 'no data' marker is not black)."""
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise ValueError(f"{bad} of {a.size} pixels are NaN or infinite (a float image); replace them "
                         f"with real values")


def _bit_depth(im: Image.Image) -> int:
    """Bits per sample of a single-channel integer image (8 for float images, which are used as is)."""
    if im.mode.startswith("I;16"):
        return 16
    if im.mode != "I":
        return 8
    tags = getattr(im, "tag_v2", None)  # TIFF: BitsPerSample (12-bit sensors store 12 in 16-bit words)
    if tags is not None and tags.get(258):
        bps = tags.get(258)
        return int(bps[0] if isinstance(bps, (tuple, list)) else bps)
    if im.format == "PNG":  # Pillow reads 16-bit gray PNGs as mode I
        return 16
    return 32


def to_chw(a: np.ndarray, channels: int) -> Tensor:
    """uint8 CHW with `channels` (1 or 3): colour to luma for 1, gray replicated for 3."""
    if a.ndim == 3 and channels == 1:  # a color file in a gray set: ITU-R 601 luma, as PIL's convert("L")
        a = np.asarray(Image.fromarray(a, "RGB").convert("L"))
    t = torch.from_numpy(np.array(a, copy=True))  # PIL arrays are read-only
    if t.dim() == 2:
        t = t.unsqueeze(0)
        return t.expand(3, -1, -1).contiguous() if channels == 3 else t
    return t.permute(2, 0, 1).contiguous()


def short_side_center_crop(t: Tensor, size: int) -> Tensor:
    """uint8 CHW resized so the short side is `size` (bilinear, antialiased when shrinking), then the centre `size` x `size`."""
    h, w = t.shape[-2:]
    if (h, w) == (size, size):
        return t
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    # only the kept rows/columns of the resize: the same numbers as resize-then-crop, without the
    # memory of the full resized image (an 8000 x 10 strip at 32 px)
    ry = _resize_matrix(h, nh, slice(y0, y0 + size))
    rx = _resize_matrix(w, nw, slice(x0, x0 + size))
    return (ry @ t.float() @ rx.T).round_().clamp_(0, 255).to(torch.uint8).contiguous()
