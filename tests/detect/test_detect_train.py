"""Detection trains through the classification engine: checkpoints, metrics, EMA, exact resume."""
import json

import pytest
import torch

from ghostnetv3.detect import DetectionTask
from ghostnetv3.engine.train import train

from det_helpers import det_config


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_engine_trains_a_detector_and_writes_checkpoints(trained_run):
    run, summary = trained_run
    assert {"val_map", "val_map50", "ema_map", "best_map"} <= set(summary)
    last, best = load(run / "last.pt"), load(run / "best.pt")
    assert last["global_step"] == 6 and last["epoch"] == 2  # 48 images / 16 x 2 epochs
    assert last["best_map"] == summary["best_map"] and best["best_source"] in ("raw", "ema")
    assert any(k.startswith("head.classification_head") for k in last["state_dict"])
    assert last["state_dict_ema"] is not None
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["type"] == "step"]
    assert len(losses) == 6 and all(l == l for l in losses)  # finite
    assert sum(losses[3:]) < sum(losses[:3])  # the detector learns (FCOS's loss falls fast at first)


class Killed(Exception):
    pass


class KilledAfter(DetectionTask):
    """Dies in the middle of epoch 2, like a SIGKILL: no checkpoint is written at that moment."""

    def __init__(self, steps):
        self.calls, self.steps = 0, steps

    def loss(self, model, batch):
        self.calls += 1
        if self.calls > self.steps:
            raise Killed
        return super().loss(model, batch)


def test_killed_detection_run_resumes_exactly(tmp_path, trained_run, det_sets):
    ref = load(trained_run[0] / "last.pt")
    cfg = det_config(tmp_path, checkpoint_interval=4)  # saved at global step 4 = epoch 2, step 1
    with pytest.raises(Killed):
        train(cfg, train_set=det_sets[0], val_set=det_sets[1], task=KilledAfter(4))
    assert load(tmp_path / "run" / "last.pt")["global_step"] == 4  # epoch 2, step 1
    train(cfg.replace(resume=str(tmp_path / "run")), train_set=det_sets[0], val_set=det_sets[1],
          task=DetectionTask())
    got = load(tmp_path / "run" / "last.pt")
    assert got["global_step"] == ref["global_step"] == 6
    for key in ("state_dict", "state_dict_ema"):
        for k, v in ref[key].items():
            assert torch.equal(got[key][k], v), f"{key}.{k} differs after resume"
