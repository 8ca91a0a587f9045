"""The teacher-output cache: the teacher's answers for K augmented views of every training image.

FKD-style (SPEC §4): instead of running the teacher at every step, run it once per (image, view)
and replay. A view is not stored as a crop box: the augmentation is a pure function of
(seed, sample index, key), so view v of sample i is re-created exactly by augmenting with key v —
the student sees the very image the teacher saw, whatever the augmentation does.

One file, memory-mapped while training:

    b"GNV3KDC1" | uint64 header length | JSON header (padded to 64 bytes) | arrays

The header (manifest) records what the targets were built from — dataset fingerprint, transform
config, teacher identity (name + weights hash + input settings), K, seed — plus a probe: a few
augmented views pooled to 4×4, which catches a change in the augmentation *code* that leaves the
config the same. Arrays are laid out [K, N, ...] (views outer, so the build writes contiguously):
  logits mode (few classes):  logits fp16 [K, N, C]
  topk mode:                  probs fp16 [K, N, k], index int16/int32 [K, N, k], rest fp16 [K, N]
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ghostnetv3.data.rng import counter_uniform

from .losses import TeacherOutput

__all__ = ["FORMAT", "TeacherCache", "CacheMismatch", "build_cache", "remove_dead_temp_files", "transform_identity",
           "view_fn_for"]

FORMAT = "ghostnetv3-teacher-cache/1"
MAGIC = b"GNV3KDC1"
_ALIGN = 64
LOGITS_MAX_CLASSES = 64   # up to this many classes the full logits are smaller than top-10 + index
_VIEW_STREAM = 0x4B44     # counter-RNG stream for choosing views ("KD"); separate from augmentation
_PROBE = 8                # (index, view) pairs kept in the manifest to detect changed augmentation
_PROBE_TOL = 0.05         # normalized units; device numerics differ by far less, a changed crop by far more


class CacheMismatch(ValueError):
    """The cache was built from something other than what training uses."""


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def transform_identity(augment) -> dict[str, Any]:
    """What decides the views: the augmentation config and its seed."""
    cfg = dataclasses.asdict(augment.cfg) if dataclasses.is_dataclass(augment.cfg) else dict(vars(augment.cfg))
    return _jsonable({"augment": cfg, "seed": int(augment.seed)})


def _student_norm(augment) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return augment.cfg.norm_stats()


def _probe_pairs(n: int, views: int) -> tuple[Tensor, Tensor]:
    k = min(_PROBE, n)
    idx = torch.linspace(0, n - 1, k).round().long()
    v = torch.arange(k) % views
    return idx, v


def _probe(train_set, augment, views: int) -> list[list[float]]:
    idx, v = _probe_pairs(len(train_set), views)
    x = augment(train_set.images[idx], idx, v)
    return F.adaptive_avg_pool2d(x.float().cpu(), 4).flatten(1).tolist()


def view_fn_for(seed: int, views: int) -> Callable[[Tensor, int], Tensor]:
    """view(i, epoch): every view of a sample is used once per K epochs, in a shuffled order.

    Epoch e is position e mod K of a per-sample permutation of the K views drawn for cycle e // K,
    so no view is wasted (picking uniformly at random would leave about a third unused after
    K epochs). A pure function of (seed, index, epoch): resuming replays the same views.
    """
    def view_fn(indices: Tensor, epoch: int) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
        if views == 1:
            return torch.zeros_like(idx)
        cycle, pos = divmod(int(epoch), views)
        u = counter_uniform(seed, idx, cycle, _VIEW_STREAM, views)
        return u.argsort(dim=1)[:, pos]

    return view_fn


# ------------------------------------------------------------------------------------------ file

def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise ValueError(f"{path} is not a ghostnetv3 teacher cache (build one with ghostnetv3 cache-teacher)")
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n).decode())
        except (struct.error, ValueError, UnicodeDecodeError):  # cut off inside the header
            raise ValueError(f"{path} is truncated or damaged (its header cannot be read); rebuild it with "
                             f"ghostnetv3 cache-teacher") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} has format {header.get('format')!r}, this version reads {FORMAT!r}; rebuild it "
                         f"with ghostnetv3 cache-teacher")
    return header, len(MAGIC) + 8 + n


def _layout(num_samples: int, views: int, num_classes: int, store: str, topk: int) -> dict[str, dict]:
    if store == "logits":
        arrays = {"logits": ("float16", [views, num_samples, num_classes])}
    else:
        itype = "int16" if num_classes <= np.iinfo(np.int16).max else "int32"
        arrays = {"probs": ("float16", [views, num_samples, topk]),
                  "index": (itype, [views, num_samples, topk]),
                  "rest": ("float16", [views, num_samples])}
    out, offset = {}, 0
    for name, (dtype, shape) in arrays.items():
        out[name] = {"dtype": dtype, "shape": shape, "offset": offset}
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        offset += nbytes + (-nbytes) % _ALIGN
    return out


class TeacherCache:
    """A built cache, memory-mapped read-only. `targets(indices, views)` → TeacherOutput."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"teacher cache not found: {self.path}; build it with ghostnetv3 cache-teacher")
        self.header, data_start = _read_header(self.path)
        if not self.header.get("complete"):
            raise ValueError(f"{self.path} was not finished (the build was interrupted); run cache-teacher again")
        need = data_start + max((spec["offset"] + int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                                 for spec in self.header["arrays"].values()), default=0)
        if self.path.stat().st_size < need:  # np.memmap would say only "mmap length is greater than file size"
            raise ValueError(f"{self.path} is truncated ({self.path.stat().st_size} of {need} bytes); rebuild it "
                             f"with ghostnetv3 cache-teacher")
        self.arrays = {
            name: np.memmap(self.path, dtype=spec["dtype"], mode="r", offset=data_start + spec["offset"],
                            shape=tuple(spec["shape"]))
            for name, spec in self.header["arrays"].items()}

    # the manifest, by name
    views = property(lambda self: int(self.header["views"]))
    num_samples = property(lambda self: int(self.header["dataset"]["num_samples"]))
    num_classes = property(lambda self: int(self.header["teacher"]["num_classes"]))
    store = property(lambda self: self.header["store"])
    seed = property(lambda self: int(self.header["transform"]["seed"]))

    def __repr__(self) -> str:
        t = self.header["teacher"]
        return (f"TeacherCache({str(self.path)!r}, teacher={t['name']}@{t['weights']}, "
                f"data={self.header['dataset']['name']}, N={self.num_samples}, K={self.views}, "
                f"store={self.store}{'' if self.store == 'logits' else ' top-' + str(self.header['topk'])})")

    def targets(self, indices: Tensor, views: Tensor, device: str | torch.device | None = None) -> TeacherOutput:
        """The stored teacher output for sample indices[j] under view views[j]."""
        i = torch.as_tensor(indices).reshape(-1).cpu().numpy()
        v = torch.as_tensor(views).reshape(-1).cpu().numpy()
        if len(i) and (v.min() < 0 or v.max() >= self.views):
            raise ValueError(f"view ids {int(v.min())}..{int(v.max())} outside the cache's 0..{self.views - 1}: "
                             f"the loader did not replay cached views (was view_fn passed to it?)")
        if len(i) and (i.min() < 0 or i.max() >= self.num_samples):
            raise ValueError(f"sample index {int(i.max())} outside the cache's {self.num_samples} samples")
        get = lambda name: torch.from_numpy(np.ascontiguousarray(self.arrays[name][v, i])).to(device)  # noqa: E731
        if self.store == "logits":
            return TeacherOutput(logits=get("logits"), num_classes=self.num_classes)
        return TeacherOutput(probs=get("probs"), index=get("index").long(), rest=get("rest"),
                             num_classes=self.num_classes)

    def view_fn(self, seed: Optional[int] = None) -> Callable[[Tensor, int], Tensor]:
        return view_fn_for(self.seed if seed is None else seed, self.views)

    def check(self, *, train_set=None, augment=None, teacher=None, views: Optional[int] = None,
              num_classes: Optional[int] = None) -> None:
        """Refuse (CacheMismatch) unless the cache was built from exactly these; None skips a check."""
        h, problems = self.header, []
        if train_set is not None:
            fp = train_set.fingerprint()
            if fp != h["dataset"]["fingerprint"] or len(train_set) != self.num_samples:
                problems.append(f"dataset: cache built on {h['dataset']['name']} ({h['dataset']['num_samples']} "
                                f"images, fingerprint {h['dataset']['fingerprint']}), training uses "
                                f"{train_set.name} ({len(train_set)} images, fingerprint {fp}) — check "
                                f"--data, --train-subset, --val-fraction, --img-size, --seed")
        if augment is not None:
            now = transform_identity(augment)
            if now != h["transform"]:
                diff = _diff(h["transform"], now)
                problems.append(f"transform: {diff} (cache vs training)")
            elif train_set is not None and len(train_set) == self.num_samples:
                got = torch.tensor(_probe(train_set, augment, self.views))
                want = torch.tensor(h["probe"])
                if got.shape != want.shape or (got - want).abs().max() > _PROBE_TOL:
                    problems.append("transform: same config, but the augmentation now produces different "
                                    "views (the augmentation code changed)")
        if teacher is not None:
            now = _jsonable(teacher.identity())
            if now != h["teacher"]:
                problems.append(f"teacher: {_diff(h['teacher'], now)} (cache vs requested)")
        if views is not None and views != self.views:
            problems.append(f"views: cache has K={self.views}, requested K={views}")
        if num_classes is not None and num_classes != self.num_classes:
            problems.append(f"classes: cache teacher predicts {self.num_classes}, the student has {num_classes}")
        if problems:
            raise CacheMismatch(f"teacher cache {self.path} does not match this run:\n  - " + "\n  - ".join(problems)
                                + "\nrebuild it with ghostnetv3 cache-teacher using the same recipe and flags "
                                  "as training, or point --teacher-cache at the right file")


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            d = _diff(x, y, f"{prefix}{k}.")
            if d:
                out.append(d)
        elif x != y:
            out.append(f"{prefix}{k} {x!r} != {y!r}")
    return ", ".join(out)


# ----------------------------------------------------------------------------------------- build

def build_cache(teacher, train_set, augment, views: int, path: str | os.PathLike, *, topk: int = 10,
                store: str = "auto", batch_size: int = 256, device: str | torch.device | None = None,
                progress: bool = True, extra: Optional[dict] = None,
                log: Optional[Callable[[str], None]] = None) -> TeacherCache:
    """Run `teacher` on K augmented views of every image of `train_set` and write the cache to `path`.

    View v of sample i is `augment(images[i], i, key=v)`: the student replays it with the same key.
    The file is written under a temporary name and renamed when complete; the temporary file of a build
    that was killed (its process is gone) is removed first. `log`, when given, gets one line per view
    (rate and time left): the record of a build that runs without a progress bar.
    """
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    n, c = len(train_set), int(teacher.num_classes)
    if len(train_set.classes) != c:
        raise ValueError(f"teacher {teacher.name} predicts {c} classes, the data has {len(train_set.classes)}")
    if store == "auto":
        store = "logits" if c <= LOGITS_MAX_CLASSES else "topk"
    if store not in ("logits", "topk"):
        raise ValueError(f"store: {store!r} is not one of auto, logits, topk")
    topk = min(int(topk), c)
    device = torch.device(device) if device is not None else torch.device("cpu")
    mean, std = _student_norm(augment)
    layout = _layout(n, views, c, store, topk)
    header = {
        "format": FORMAT, "complete": False, "store": store, "topk": topk if store == "topk" else None,
        "views": int(views),
        "dataset": {"name": train_set.name, "fingerprint": train_set.fingerprint(), "num_samples": n,
                    "classes": list(map(str, train_set.classes))},
        "transform": transform_identity(augment),
        "teacher": _jsonable(teacher.identity()),
        "teacher_source": getattr(teacher, "source", ""),
        "probe": _probe(train_set, augment, views),
        "arrays": layout,
        **({"extra": _jsonable(extra)} if extra else {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    for stale in remove_dead_temp_files(path):
        if log:
            log(f"removed {stale.name}: the temporary file of a build whose process is gone")
    t0 = time.perf_counter()
    try:
        tmp.write_bytes(b"")
        data_start = _reserve(tmp, header)  # header now, with room for the fields known at the end
        total = max(spec["offset"] + int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                    for spec in layout.values())
        with open(tmp, "r+b") as f:
            f.truncate(data_start + total)
        arrays = {name: np.memmap(tmp, dtype=spec["dtype"], mode="r+", offset=data_start + spec["offset"],
                                  shape=tuple(spec["shape"])) for name, spec in layout.items()}
        bar = tqdm(total=n * views, desc=f"cache-teacher {teacher.name}", unit="img", disable=not progress,
                   mininterval=1.0, dynamic_ncols=True)
        for v in range(views):
            for s in range(0, n, batch_size):
                idx = torch.arange(s, min(s + batch_size, n))
                images = train_set.images[idx].to(device)
                x = augment(images, idx.to(device), torch.full_like(idx, v).to(device))
                logits = teacher.predict(x, mean, std).float().cpu()
                if store == "logits":
                    arrays["logits"][v, s:s + len(idx)] = logits.numpy().astype(np.float16)
                else:
                    p = logits.softmax(-1)
                    top, ti = p.topk(topk, dim=-1)
                    arrays["probs"][v, s:s + len(idx)] = top.numpy().astype(np.float16)
                    arrays["index"][v, s:s + len(idx)] = ti.numpy().astype(layout["index"]["dtype"])
                    arrays["rest"][v, s:s + len(idx)] = (1.0 - top.sum(-1)).clamp_min(0).numpy().astype(np.float16)
                bar.update(len(idx))
            if log:
                done, spent = (v + 1) * n, time.perf_counter() - t0
                log(f"view {v + 1}/{views}: {done} of {n * views} teacher outputs, {done / spent:.0f} img/s, "
                    f"~{spent / done * (n * views - done) / 60:.1f} min left")
        bar.close()
        for a in arrays.values():
            a.flush()
        del arrays
        header.update(complete=True, build_seconds=round(time.perf_counter() - t0, 3),
                      created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        _rewrite_header(tmp, header, data_start)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return TeacherCache(path)


def remove_dead_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove `.NAME.tmpPID` files next to `path` whose process no longer runs (a build killed by a
    signal or a power loss cannot remove its own). A live build's file is left alone."""
    path, removed = Path(path), []
    for p in path.parent.glob(f".{path.name}.tmp*"):
        pid = p.name[len(path.name) + 5:]
        if p.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_HEADER_SLACK = 1024  # bytes reserved for fields filled in when the build finishes


def _reserve(path: Path, header: dict) -> int:
    """Write the header with slack for its final form; return where the arrays start."""
    raw = json.dumps(dict(header, build_seconds=0.0, complete=False, created="0000-00-00T00:00:00Z"),
                     indent=1).encode()
    size = len(raw) + _HEADER_SLACK
    size += (-(len(MAGIC) + 8 + size)) % _ALIGN
    with open(path, "r+b") as f:
        f.write(MAGIC + struct.pack("<Q", size) + raw + b" " * (size - len(raw)))
    return len(MAGIC) + 8 + size


def _rewrite_header(path: Path, header: dict, data_start: int) -> None:
    raw = json.dumps(header, indent=1).encode()
    size = data_start - len(MAGIC) - 8
    if len(raw) > size:
        raise RuntimeError("teacher cache header outgrew its reserved space (a bug; please report it)")
    with open(path, "r+b") as f:
        f.write(MAGIC + struct.pack("<Q", size) + raw + b" " * (size - len(raw)))
        f.flush()
        os.fsync(f.fileno())


def size_on_disk(path: str | os.PathLike) -> int:
    st = os.stat(path)
    return getattr(st, "st_blocks", math.ceil(st.st_size / 512)) * 512
