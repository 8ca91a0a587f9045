"""Fixtures: a run directory shaped like the ones `ghostnetv3 train` writes."""
from __future__ import annotations

import pytest
import torch
import yaml

from deploy_helpers import IMG, MODEL, tiny_model


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """config.yaml + best.pt (state_dict and a different state_dict_ema), like the engine's."""
    d = tmp_path_factory.mktemp("run")
    cfg = {"model": MODEL, "data": "fashion-mnist", "num_classes": None, "in_chans": 1, "img_size": IMG,
           "seed": 42, "val_fraction": 0.1, "mean": None, "std": None, "interpolation": "bilinear"}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    raw = tiny_model(in_chans=1).state_dict()
    ema = {k: v.clone() for k, v in raw.items()}
    ema["classifier.bias"] += 1.0  # tells which weights were loaded
    torch.save({"format": "ghostnetv3-weights/1", "model_name": MODEL, "state_dict": raw,
                "state_dict_ema": ema, "num_classes": 10, "in_chans": 1, "config": cfg}, d / "best.pt")
    return d
