"""Batches from an in-memory ImageSet, augmented on the fly, resumable mid-epoch.

The order of epoch e is randperm(N) from a generator seeded with seed*1000003 + e; rank r of
world_size takes the strided slice perm[r::world_size] (as DistributedSampler, padded with the
permutation's head when not drop_last). A batch is then a pure function of (seed, epoch,
batch number, rank), so `iter_from(k)` reproduces a full epoch's batches k.. bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from typing import Callable, Iterator, NamedTuple

import torch
from torch import Tensor

from .augment import AugConfig, BatchAugment
from .datasets import ImageSet

__all__ = ["Batch", "InMemoryLoader", "make_loaders"]


def shard_order(n: int, epoch: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                drop_last: bool = True) -> Tensor:
    """This rank's sample indices for an epoch (every loader's order): a seeded permutation per epoch,
    strided over ranks as DistributedSampler, padded with its head so every rank gets the same count."""
    num = n // world_size if drop_last else math.ceil(n / world_size)
    if num == 0:
        raise ValueError(f"{n} samples are fewer than world_size={world_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)) if shuffle \
        else torch.arange(n)
    total = num * world_size
    if total > n:
        perm = torch.cat([perm, perm.repeat(math.ceil(total / n))[: total - n]])
    return perm[:total][rank::world_size]


class Batch(NamedTuple):
    images: Tensor  # float32 [B, in_chans, H, W], normalized
    labels: Tensor  # int64 [B]
    indices: Tensor  # int64 [B], positions in the ImageSet
    keys: Tensor  # int64 [B], augmentation key (the epoch, or view_fn's view id)


class InMemoryLoader:
    """Iterates an ImageSet in batches with BatchAugment; no worker processes.

    augment=None yields the uint8 images as stored. prefetch=True builds the next batch on a
    thread while the caller works on this one (helps when the step leaves a core idle).
    """

    def __init__(self, ds: ImageSet, batch_size: int, augment: BatchAugment | None, *, shuffle: bool,
                 drop_last: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", channels_last: bool = False,
                 view_fn: Callable[[Tensor, int], Tensor] | None = None, prefetch: bool = False,
                 aug_threads: int | None = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive batch size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        self.ds = ds
        self.batch_size = int(batch_size)
        self.augment = augment
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.view_fn = view_fn
        self.prefetch = prefetch  # build the next batch on a thread while the caller trains
        # Batches are small tensors. With the cores busy (a training step beside the prefetch
        # thread, other processes) one intra-op thread built them 5-20x faster than two here
        # (OpenMP oversubscription); idle, two could at best halve a cost that is ~1% of a
        # train step. None: leave torch's setting alone.
        self.aug_threads = aug_threads
        self.epoch = 0
        n = len(ds)
        if drop_last:
            self.num_samples = n // world_size
        else:
            self.num_samples = math.ceil(n / world_size)
        if self.num_samples == 0:
            raise ValueError(f"{ds.name} has {n} images, fewer than world_size={world_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def rank_indices(self, epoch: int | None = None) -> Tensor:
        """This rank's sample indices for an epoch, in iteration order."""
        return shard_order(len(self.ds), self.epoch if epoch is None else epoch, seed=self.seed, rank=self.rank,
                           world_size=self.world_size, shuffle=self.shuffle, drop_last=self.drop_last)

    def _batch(self, idx: Tensor, epoch: int) -> Batch:
        if self.view_fn is not None:
            keys = torch.as_tensor(self.view_fn(idx, epoch), dtype=torch.int64).reshape(-1)
        else:
            keys = torch.full_like(idx, epoch)
        images = self.ds.images[idx]
        if self.device.type != "cpu":
            images = images.pin_memory().to(self.device, non_blocking=True)
        if self.augment is None:  # raw uint8 batches (callers that transform elsewhere)
            x = images
        else:
            x = self.augment(images, idx.to(self.device), keys.to(self.device))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, self.ds.labels[idx].to(self.device), idx, keys)

    def _batches(self, start_batch: int, epoch: int) -> Iterator[Batch]:
        order = self.rank_indices(epoch)
        for b in range(start_batch, len(self)):
            with _intra_op_threads(self.aug_threads):  # per OS thread with OpenMP: the caller's is restored
                batch = self._batch(order[b * self.batch_size:(b + 1) * self.batch_size], epoch)
            yield batch

    def iter_from(self, start_batch: int) -> Iterator[Batch]:
        """Batches start_batch.. of the current epoch, identical to a full iteration's."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch={start_batch} outside 0..{len(self)}")
        gen = self._batches(start_batch, self.epoch)
        return _prefetched(gen) if self.prefetch else gen

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


@contextlib.contextmanager
def _intra_op_threads(n: int | None):
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _prefetched(gen: Iterator[Batch], depth: int = 1) -> Iterator[Batch]:
    """Run `gen` `depth` batches ahead on a daemon thread (torch ops release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:  # gives up when the consumer has gone away
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in gen:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # re-raised in the consumer
            put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def make_loaders(train: ImageSet, val: ImageSet, batch_size: int, image_size: int | tuple[int, int],
                 *, in_chans: int = 3, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", channels_last: bool = False,
                 eval_batch_size: int | None = None, view_fn=None, **aug_kwargs
                 ) -> tuple[InMemoryLoader, InMemoryLoader]:
    """Train loader (shuffled, augmented with AugConfig(**aug_kwargs)) and eval loader."""
    train_cfg = AugConfig(image_size=image_size, in_chans=in_chans, train=True, **aug_kwargs)
    eval_kw = {k: v for k, v in aug_kwargs.items() if k in ("mean", "std", "eval_crop_pct", "interpolation")}
    eval_cfg = AugConfig(image_size=image_size, in_chans=in_chans, train=False, **eval_kw)
    common = dict(seed=seed, rank=rank, world_size=world_size, device=device, channels_last=channels_last)
    tl = InMemoryLoader(train, batch_size, BatchAugment(train_cfg, seed), shuffle=True,
                        drop_last=True, view_fn=view_fn, **common)
    vl = InMemoryLoader(val, eval_batch_size or batch_size, BatchAugment(eval_cfg, seed),
                        shuffle=False, drop_last=False, **common)
    return tl, vl
