"""The bundled detection set and the COCO reader."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ghostnetv3.detect import build_fashion_detection, load_detection_dataset, read_coco


def test_bundled_set_is_deterministic_with_the_seed(det_sets):
    train, _ = det_sets
    again = build_fashion_detection("train", 48, 64, seed=0)
    assert torch.equal(train.images, again.images)
    assert all(torch.equal(a, b) for a, b in zip(train.boxes, again.boxes))
    assert all(torch.equal(a, b) for a, b in zip(train.labels, again.labels))
    other = build_fashion_detection("train", 48, 64, seed=1)
    assert not torch.equal(train.images, other.images)


def test_boxes_are_tight_around_the_object_pixels(det_sets):
    for ds in det_sets:
        for img, boxes in zip(ds.images[:, 0], ds.boxes):
            covered = torch.zeros_like(img, dtype=torch.bool)
            for x1, y1, x2, y2 in boxes.long().tolist():
                assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
                region = img[y1:y2, x1:x2]
                # every edge of the box touches object pixels (no slack) ...
                assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
                covered[y1:y2, x1:x2] = True
            # ... and no object pixel lies outside all boxes
            assert not (img.bool() & ~covered).any()


def test_several_objects_per_image_with_real_labels(det_sets):
    train, val = det_sets
    counts = [len(b) for b in train.boxes + val.boxes]
    assert min(counts) >= 2 and np.mean(counts) >= 2.5
    labels = torch.cat(train.labels + val.labels)
    assert labels.min() >= 1 and labels.max() <= 10 and len(labels.unique()) >= 8
    assert len(train.classes) == 10


def test_train_and_val_canvases_use_disjoint_source_splits(monkeypatch):
    import ghostnetv3.data as data
    asked = []
    real = data.load_dataset

    def spy(name, split="train", **kw):
        asked.append((name, split))
        return real(name, split=split, **kw)

    monkeypatch.setattr(data, "load_dataset", spy)
    build_fashion_detection("train", 2, 64, seed=0)
    build_fashion_detection("val", 2, 64, seed=0)
    # Fashion-MNIST's train and test images are disjoint, so no object is in both splits
    assert asked == [("fashion-mnist", "train"), ("fashion-mnist", "test")]


def test_val_set_does_not_depend_on_the_train_size():
    a = build_fashion_detection("val", 4, 64, seed=3)
    b = build_fashion_detection("val", 6, 64, seed=3)
    assert torch.equal(a.images, b.images[:4])


# --------------------------------------------------------------------------- COCO reader

def write_coco(root, annotations, categories=({"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}),
               images=(("a.png", 40, 20), ("b.png", 30, 30), ("c.png", 10, 10))):
    root.mkdir(parents=True, exist_ok=True)
    for name, w, h in images:
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / name)
    coco = {"images": [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(images)],
            "annotations": [dict(a, id=k + 1) for k, a in enumerate(annotations)],
            "categories": list(categories)}
    (root / "instances.json").write_text(json.dumps(coco))
    return root / "instances.json"


def test_coco_reader_clips_drops_and_allows_empty(tmp_path):
    path = write_coco(tmp_path, [
        {"image_id": 1, "category_id": 9, "bbox": [4, 2, 10, 8]},          # fine
        {"image_id": 1, "category_id": 7, "bbox": [30, 10, 20, 20]},       # past the right/bottom edge
        {"image_id": 2, "category_id": 7, "bbox": [5, 5, 0, 10]},          # zero width
        {"image_id": 2, "category_id": 7, "bbox": [50, 50, 5, 5]},         # wholly outside: zero area once clipped
    ])  # c.png: no annotations at all
    logs = []
    ds, cat_ids = read_coco(path, 80, log=logs.append)
    assert cat_ids == [7, 9] and ds.classes == ["cat", "dog"]
    assert ds.report == {"clipped": 1, "dropped_degenerate": 2, "empty_images": 2}
    assert len(logs) == 1 and "1 boxes clipped" in logs[0] and "2 zero-area boxes dropped" in logs[0]
    assert ds.images.shape == (3, 3, 80, 80)
    # a.png is 40x20 -> scaled x2; boxes scaled alike, the clipped one ends at the image edge
    assert ds.boxes[0].tolist() == [[8.0, 4.0, 28.0, 20.0], [60.0, 20.0, 80.0, 40.0]]
    assert ds.labels[0].tolist() == [2, 1]
    assert ds.boxes[1].shape == (0, 4) and ds.boxes[2].shape == (0, 4)
    assert ds.images[0, :, 40:].sum() == 0  # padding below the 80x40 image


def test_coco_unknown_category_names_the_file(tmp_path):
    path = write_coco(tmp_path, [{"image_id": 2, "category_id": 3, "bbox": [1, 1, 4, 4]}])
    with pytest.raises(ValueError, match=r"annotation 1 of 'b.png' has unknown category_id 3 \(known: \[7, 9\]\)"):
        read_coco(path, 64)


def test_coco_bad_bbox_and_missing_image(tmp_path):
    path = write_coco(tmp_path / "x", [{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3]}])
    with pytest.raises(ValueError, match=r"of 'a.png' has bbox \[1, 2, 3\]; COCO boxes are \[x, y, width, height\]"):
        read_coco(path, 64)
    path = write_coco(tmp_path / "y", [])
    (tmp_path / "y" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"cannot read image .*b.png .*--on-bad-image skip"):
        read_coco(path, 64)
    ds, _ = read_coco(path, 64, on_bad_image="skip")
    assert len(ds) == 2 and ds.skipped[0].endswith("b.png")


def test_coco_folder_split_and_missing_data(tmp_path):
    write_coco(tmp_path / "train", [{"image_id": 1, "category_id": 9, "bbox": [4, 2, 10, 8]}])
    write_coco(tmp_path / "val", [{"image_id": 2, "category_id": 7, "bbox": [4, 2, 10, 8]}])
    train, val = load_detection_dataset(str(tmp_path), image_size=64)
    assert len(train) == len(val) == 3 and val.labels[1].tolist() == [1]
    with pytest.raises(FileNotFoundError, match="use 'fashion-detect' or a folder with instances.json"):
        load_detection_dataset(str(tmp_path / "nope"), image_size=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no instances.json"):
        load_detection_dataset(str(tmp_path / "empty"), image_size=64)
