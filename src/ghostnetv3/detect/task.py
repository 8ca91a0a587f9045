"""`DetectionTask`: what `engine.train.train(cfg, task=...)` needs to train a detector.

The engine keeps everything that is not specific to detection — optimizer, schedule, EMA,
checkpoints, exact resume, DDP, signals, logging; the task supplies data, model, loss and metric
(the protocol of `ghostnetv3.engine.task.Task`, as `ClassificationTask` does for classifiers).
"""
from __future__ import annotations

import contextlib
import io
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from ghostnetv3.data import ImageSet, InMemoryLoader
from ghostnetv3.engine.distributed import autocast
from ghostnetv3.engine.task import Task
from ghostnetv3.errors import UserError

from .data import DetectionSet, load_detection_dataset
from .model import build_detector


class DetBatch(NamedTuple):
    images: Tensor        # float32 [B, C, S, S] in [0, 1]; the detector normalises
    targets: list         # per image {"boxes": [n, 4] xyxy px, "labels": [n]}
    indices: Tensor       # positions in the DetectionSet
    keys: Tensor          # the epoch


class DetectionLoader:
    """Batches of a DetectionSet. Order, DDP sharding and mid-epoch resume are the classification
    InMemoryLoader's (it iterates the images); the horizontal flip of sample i in epoch e is a pure
    function of (seed, e, i), so a resumed run sees the same batches."""

    def __init__(self, ds: DetectionSet, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 rank: int = 0, world_size: int = 1, device="cpu", hflip: float = 0.0,
                 channels_last: bool = False, prefetch: bool = False):
        index_set = ImageSet(ds.images, torch.arange(len(ds)), list(ds.classes), ds.name)
        self.inner = InMemoryLoader(index_set, batch_size, None, shuffle=shuffle, drop_last=drop_last,
                                    seed=seed, rank=rank, world_size=world_size, device=device,
                                    channels_last=channels_last, prefetch=prefetch)
        self.ds, self.seed, self.hflip = ds, int(seed), float(hflip)
        self.device = torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def _flips(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch + 7)
        return torch.rand(len(self.ds), generator=g) < self.hflip

    def iter_from(self, start_batch: int):
        flips = self._flips(self.inner.epoch) if self.hflip > 0 else None
        for b in self.inner.iter_from(start_batch):
            x = b.images.float().div_(255)
            targets = []
            for row, i in enumerate(b.indices.tolist()):
                boxes, labels = self.ds.boxes[i].clone(), self.ds.labels[i]
                if flips is not None and flips[i]:
                    x[row] = x[row].flip(-1)
                    width = x.shape[-1]
                    boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
                targets.append({"boxes": boxes.to(self.device), "labels": labels.to(self.device)})
            yield DetBatch(x, targets, b.indices, b.keys)

    def __iter__(self):
        return self.iter_from(0)


class DetectionTask(Task):
    """Train/evaluate a GhostNet-backbone FCOS on a DetectionSet through the classification engine."""

    name = "detection"
    metric = "map"  # COCO mAP@[.5:.95] (%), which picks best.pt

    def load_datasets(self, cfg) -> tuple[DetectionSet, DetectionSet]:
        return load_detection_dataset(cfg.data, image_size=cfg.img_size, seed=cfg.seed,
                                      val_fraction=cfg.val_fraction, in_chans=cfg.in_chans,
                                      on_bad_image=cfg.on_bad_image, train_subset=cfg.train_subset,
                                      val_subset=cfg.val_subset)

    def build_model(self, cfg, num_classes: int, in_chans: int) -> nn.Module:
        unsupported = {"mixup": cfg.mixup > 0, "cutmix": cfg.cutmix > 0, "teacher": bool(cfg.teacher),
                       "teacher_cache": bool(cfg.teacher_cache), "aa": bool(cfg.aa), "repify": cfg.repify}
        bad = [k for k, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"detection training does not support {', '.join('--' + k.replace('_', '-') for k in bad)}; "
                             f"remove them from the recipe")
        return build_detector(cfg.model, num_classes, in_chans, image_size=cfg.img_size, width=cfg.width,
                              num_conv_branches=cfg.num_conv_branches,
                              scale_branch=getattr(cfg, "scale_branch", None),
                              identity_branch=getattr(cfg, "identity_branch", None),
                              init_checkpoint=cfg.init_checkpoint, mean=cfg.mean, std=cfg.std)

    def train_loader(self, cfg, train_set: DetectionSet, d, device) -> DetectionLoader:
        return DetectionLoader(train_set, cfg.batch_size // d.world_size, shuffle=True, drop_last=True,
                               seed=cfg.seed, rank=d.rank, world_size=d.world_size, device=device,
                               hflip=cfg.hflip, channels_last=cfg.channels_last, prefetch=True)

    def val_loader(self, cfg, val_set: DetectionSet, device) -> DetectionLoader:
        return DetectionLoader(val_set, max(cfg.batch_size or 0, 64), shuffle=False, drop_last=False,
                               seed=cfg.seed, device=device, channels_last=cfg.channels_last)

    def loss(self, model: nn.Module, batch: DetBatch) -> tuple[Tensor, dict[str, Tensor]]:
        losses = model(list(batch.images), batch.targets)
        return sum(losses.values()), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DetectionLoader, device, amp: str = "none") -> dict[str, float]:
        model.eval()
        detections = []
        for batch in loader:
            with autocast(torch.device(device), amp):
                out = model(list(batch.images))
            for i, o in zip(batch.indices.tolist(), out):
                detections.append((i, o["boxes"].float().cpu(), o["scores"].float().cpu(), o["labels"].cpu()))
        return coco_map(loader.ds, detections)


def coco_map(ds: DetectionSet, detections: list) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 (%, pycocotools) of `detections` [(index, boxes, scores, labels)]."""
    try:
        from pycocotools.coco import COCO  # lazy: pycocotools is an optional extra ([detect])
        from pycocotools.cocoeval import COCOeval  # lazy: pycocotools is an optional extra ([detect])
    except ImportError:
        raise UserError("detection metrics need pycocotools: pip install 'ghostnetv3[detect]'") from None
    if len(ds) == 0:
        raise ValueError("the validation set is empty")
    size = ds.images.shape[-1]
    gt = {"images": [{"id": i, "width": size, "height": size} for i in range(len(ds))],
          "categories": [{"id": k + 1, "name": c} for k, c in enumerate(ds.classes)], "annotations": []}
    for i, (boxes, labels) in enumerate(zip(ds.boxes, ds.labels)):
        for b, lab in zip(boxes.tolist(), labels.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(lab),
                                      "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
    dets = [{"image_id": i, "category_id": int(lab), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
             "score": float(s)}
            for i, boxes, scores, labels in detections
            for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())]
    n_obj = len(gt["annotations"])
    if not dets or n_obj == 0:  # pycocotools cannot load an empty result list
        return {"map": 0.0, "map50": 0.0, "n": len(ds), "objects": n_obj, "detections": len(dets)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": 100.0 * max(float(ev.stats[0]), 0.0), "map50": 100.0 * max(float(ev.stats[1]), 0.0),
            "n": len(ds), "objects": n_obj, "detections": len(dets)}
