"""Detection data: the bundled Fashion-MNIST canvases and a COCO-format reader, both in memory.

A `DetectionSet` is the detection twin of `ghostnetv3.data.ImageSet`: every image decoded once,
resized/padded to one square size, with boxes (x1, y1, x2, y2 in pixels) and labels 1..K
(0 is the background slot torchvision's detectors reserve).

- `fashion-detect`: real Fashion-MNIST objects pasted on black canvases, several per image, boxes
  from each pasted object's nonzero pixels, fully determined by the seed. Train canvases use
  Fashion-MNIST train images, val canvases the test images: no object appears in both splits.
- a folder with `instances.json` (COCO) and its images, or `train/` + `val/` folders of those.
  Bad annotations are fixed where the fix is unambiguous (clipped to the image, degenerate boxes
  dropped; both counted and reported) and refused with the file name otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ghostnetv3 import data as image_data  # called through the module: tests spy on load_dataset

BUNDLED = "fashion-detect"
# canvases in each split of the bundled set (train_subset / val_subset take fewer)
BUNDLED_SIZES = {"train": 4000, "val": 500}
OBJECTS_PER_IMAGE = (2, 5)   # inclusive range
OBJECT_SCALE = (0.8, 1.6)    # x 28 px
MAX_OVERLAP_IOU = 0.2        # placements overlapping more are retried


@dataclass
class DetectionSet:
    images: Tensor                 # uint8 [N, C, S, S]
    boxes: list[Tensor]            # float32 [n_i, 4] x1 y1 x2 y2, pixels
    labels: list[Tensor]           # int64 [n_i], 1..K
    classes: list[str]             # K names; label k is classes[k - 1]
    name: str
    skipped: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)  # clipped / dropped counts from the reader

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"DetectionSet.images must be uint8 [N, C, H, W], got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if not len(self.boxes) == len(self.labels) == self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images, {len(self.boxes)} box lists, "
                             f"{len(self.labels)} label lists")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        n_obj = sum(len(b) for b in self.boxes)
        return f"DetectionSet({self.name!r}, n={len(self)}, objects={n_obj}, shape={tuple(self.images.shape[1:])})"

    def subset(self, indices) -> "DetectionSet":
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return DetectionSet(self.images[idx], [self.boxes[i] for i in idx.tolist()],
                            [self.labels[i] for i in idx.tolist()], list(self.classes),
                            f"{self.name}[{len(idx)}]", list(self.skipped), dict(self.report))


# --------------------------------------------------------------------------- bundled set

def build_fashion_detection(split: str, n_images: Optional[int] = None, canvas: int = 96,
                            seed: int = 0) -> DetectionSet:
    """Canvases of `canvas` px with 2-5 real Fashion-MNIST objects each (seeded)."""
    if split not in BUNDLED_SIZES:
        raise ValueError(f"split {split!r}: use train or val")
    if canvas < 64:
        raise ValueError(f"canvas {canvas} px is too small for 2-5 objects of 22-45 px; use --img-size >= 64")
    n = BUNDLED_SIZES[split] if n_images is None else int(n_images)
    src = image_data.load_dataset("fashion-mnist", split="train" if split == "train" else "test")
    # one stream per split, so the val set does not change when the train size does
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    for i in range(n):
        k = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
        boxes, labels = [], []
        for _ in range(k):
            j = int(rng.integers(len(src)))
            size = int(round(28 * rng.uniform(*OBJECT_SCALE)))
            obj = src.images[j:j + 1].float()
            obj = F.interpolate(obj, size=(size, size), mode="bilinear", align_corners=False)
            obj = obj.round().clamp(0, 255).to(torch.uint8)[0, 0]
            ys, xs = torch.nonzero(obj > 0, as_tuple=True)
            if ys.numel() == 0:
                continue
            for _try in range(20):  # retry placements that would hide another object
                x0 = int(rng.integers(0, canvas - size + 1))
                y0 = int(rng.integers(0, canvas - size + 1))
                box = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
                if all(_iou(box, b) <= MAX_OVERLAP_IOU for b in boxes):
                    break
            else:
                continue
            region = images[i, 0, y0:y0 + size, x0:x0 + size]
            torch.maximum(region, obj, out=region)
            boxes.append(box)
            labels.append(int(src.labels[j]) + 1)
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    return DetectionSet(images, all_boxes, all_labels, list(src.classes), f"{BUNDLED}:{split}")


def _iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --------------------------------------------------------------------------- COCO reader

def read_coco(json_path: str | Path, image_size: int, *, image_dir: Optional[str | Path] = None,
              in_chans: Optional[int] = None, on_bad_image: str = "fail",
              classes: Optional[list[str]] = None, category_ids: Optional[list[int]] = None,
              log=print) -> tuple[DetectionSet, list[int]]:
    """Read a COCO `instances.json` and its images into a DetectionSet of `image_size` squares.

    Images are scaled so the longer side is `image_size` and padded at the bottom/right (boxes
    scaled alike). Returns the set and the COCO category ids in label order (label k is
    category_ids[k - 1]); pass them back as `category_ids` to read a val split with the same labels.
    """
    json_path = Path(json_path)
    image_dir = Path(image_dir) if image_dir is not None else json_path.parent
    coco = _read_coco_json(json_path)
    cats = _coco_categories(coco, json_path)
    if category_ids is None:
        category_ids = sorted(cats)
        classes = [cats[c] for c in category_ids]
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    if not label_of:
        raise ValueError(f"{json_path}: 'categories' is empty; a detector needs at least one class")
    images_meta, anns = _coco_annotations(coco, json_path, label_of)
    mode = {1: "L", 3: "RGB", None: "RGB"}.get(in_chans)
    if mode is None:
        raise ValueError(f"in_chans {in_chans}: COCO images are read as 1 (gray) or 3 (RGB) channels")
    counts = {"clipped": 0, "dropped_degenerate": 0, "empty_images": 0}
    out_images, out_boxes, out_labels, skipped = [], [], [], []
    for img_id, im in images_meta.items():
        path = image_dir / im["file_name"]
        try:
            arr, (w, h), scale = _decode_scaled(path, mode, image_size)
        except (OSError, ValueError) as e:
            if on_bad_image == "skip":
                skipped.append(str(path))
                continue
            raise ValueError(f"cannot read image {path} ({e.__class__.__name__}: {e}); fix it or pass "
                             f"--on-bad-image skip") from None
        boxes, labels = _scaled_boxes(anns[img_id], (w, h), scale, label_of, counts)
        if not boxes:
            counts["empty_images"] += 1
        out_images.append(_pad_square(arr, image_size))
        out_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        out_labels.append(torch.tensor(labels, dtype=torch.int64))
    if not out_images:
        raise ValueError(f"{json_path}: no readable images" + (f" ({len(skipped)} skipped)" if skipped else ""))
    if counts["clipped"] or counts["dropped_degenerate"]:
        log(f"note: {json_path}: {counts['clipped']} boxes clipped to the image, "
            f"{counts['dropped_degenerate']} zero-area boxes dropped")
    ds = DetectionSet(torch.stack(out_images), out_boxes, out_labels, list(classes), str(json_path),
                      skipped, counts)
    return ds, list(category_ids)


def _read_coco_json(json_path: Path) -> dict:
    """The parsed annotation file, with its three COCO lists checked to be there."""
    if not json_path.is_file():
        raise FileNotFoundError(f"no COCO annotation file {json_path}; expected instances.json next to the images")
    try:
        coco = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path} is not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{json_path}: missing the COCO list '{key}'")
    return coco


def _coco_categories(coco: dict, json_path: Path) -> dict[int, str]:
    """{category id: name} of the file's categories."""
    cats = {}
    for c in coco["categories"]:
        if "id" not in c:
            raise ValueError(f"{json_path}: a category has no 'id': {c}")
        cats[int(c["id"])] = str(c.get("name", c["id"]))
    return cats


def _coco_annotations(coco: dict, json_path: Path, label_of: dict[int, int]) -> tuple[dict, dict]:
    """({image id: image entry}, {image id: [annotation]}), every entry checked; a wrong one is refused
    naming the file, the annotation and its image."""
    images_meta = {}
    for im in coco["images"]:
        if "id" not in im or "file_name" not in im:
            raise ValueError(f"{json_path}: an image entry lacks 'id' or 'file_name': {im}")
        images_meta[im["id"]] = im
    anns: dict = {i: [] for i in images_meta}
    for a in coco["annotations"]:
        im = images_meta.get(a.get("image_id"))
        if im is None:
            raise ValueError(f"{json_path}: annotation {a.get('id')} refers to image_id {a.get('image_id')!r}, "
                             f"which is not in 'images'")
        if a.get("category_id") not in label_of:
            raise ValueError(f"{json_path}: annotation {a.get('id')} of '{im['file_name']}' has unknown "
                             f"category_id {a.get('category_id')!r} (known: {sorted(label_of)}); "
                             f"add it to 'categories' or fix the annotation")
        bbox = a.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
            raise ValueError(f"{json_path}: annotation {a.get('id')} of '{im['file_name']}' has bbox {bbox!r}; "
                             f"COCO boxes are [x, y, width, height] numbers")
        anns[im["id"]].append(a)
    return images_meta, anns


def _decode_scaled(path: Path, mode: str, image_size: int) -> tuple[np.ndarray, tuple[int, int], float]:
    """(uint8 HxWxC with the longer side `image_size`, the original (width, height), the scale)."""
    with Image.open(path) as pil:
        pil = pil.convert(mode)
        w, h = pil.size
        scale = image_size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        pil = pil.resize((nw, nh), Image.BILINEAR)
        arr = np.asarray(pil, dtype=np.uint8).reshape(nh, nw, 1 if mode == "L" else 3)
    return arr, (w, h), scale


def _pad_square(arr: np.ndarray, image_size: int) -> Tensor:
    """uint8 CHW `image_size` square with the image at the top left, zeros at the bottom/right."""
    nh, nw, chans = arr.shape
    canvas = torch.zeros(chans, image_size, image_size, dtype=torch.uint8)
    canvas[:, :nh, :nw] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return canvas


def _scaled_boxes(anns: list[dict], size: tuple[int, int], scale: float, label_of: dict[int, int],
                  counts: dict[str, int]) -> tuple[list[list[float]], list[int]]:
    """One image's boxes (x1 y1 x2 y2, clipped to the image, then scaled) and labels; zero-area boxes
    dropped. Clipped and dropped boxes are counted in `counts`."""
    w, h = size
    boxes, labels = [], []
    for a in anns:
        x, y, bw, bh = (float(v) for v in a["bbox"])
        x1, y1, x2, y2 = x, y, x + bw, y + bh
        cx1, cy1, cx2, cy2 = min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)
        if cx2 - cx1 < 1e-3 or cy2 - cy1 < 1e-3:
            counts["dropped_degenerate"] += 1
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            counts["clipped"] += 1
        boxes.append([cx1 * scale, cy1 * scale, cx2 * scale, cy2 * scale])
        labels.append(label_of[a["category_id"]])
    return boxes, labels


def load_detection_dataset(name_or_path: str, *, image_size: int, seed: int = 0, val_fraction: float = 0.1,
                           in_chans: Optional[int] = None, on_bad_image: str = "fail",
                           train_subset: Optional[int] = None, val_subset: Optional[int] = None
                           ) -> tuple[DetectionSet, DetectionSet]:
    """(train, val): the bundled set by name, or a COCO folder (`instances.json` + images, or
    `train/` and `val/` folders each holding one)."""
    if name_or_path == BUNDLED:
        return (build_fashion_detection("train", train_subset, image_size, seed),
                build_fashion_detection("val", val_subset, image_size, seed))
    root = Path(name_or_path)
    if not root.exists():
        raise FileNotFoundError(f"detection data '{name_or_path}' not found: use '{BUNDLED}' or a folder "
                                f"with instances.json (COCO) and its images")
    kw = dict(in_chans=in_chans, on_bad_image=on_bad_image)
    if root.is_file() and root.suffix == ".json":
        root, single = root.parent, root
    else:
        single = root / "instances.json"
    if (root / "train" / "instances.json").is_file():
        train, cat_ids = read_coco(root / "train" / "instances.json", image_size, **kw)
        val_json = root / "val" / "instances.json"
        if not val_json.is_file():
            raise FileNotFoundError(f"{root}/train has instances.json but {val_json} is missing")
        val, _ = read_coco(val_json, image_size, classes=train.classes, category_ids=cat_ids, **kw)
    elif single.is_file():
        full, _ = read_coco(single, image_size, **kw)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(full), generator=g)
        n_val = max(1, round(len(full) * val_fraction))
        if n_val >= len(full):
            raise ValueError(f"{single}: {len(full)} images cannot be split into train and val; add images")
        val, train = full.subset(perm[:n_val].sort().values), full.subset(perm[n_val:].sort().values)
    else:
        raise FileNotFoundError(f"{root} has no instances.json (nor train/instances.json); a COCO folder holds "
                                f"instances.json and the images its file_name entries name")
    if train_subset is not None and train_subset < len(train):
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:train_subset])
    if val_subset is not None and val_subset < len(val):
        val = val.subset(torch.arange(val_subset))
    return train, val
