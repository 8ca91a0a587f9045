import pytest
import torch
import torch.nn as nn

import ghostnetv3.engine.metrics_log as metrics_log
import ghostnetv3.engine.task as engine_task
import ghostnetv3.engine.train as engine
from engine_helpers import load, tiny_config


class GoesNaN(nn.Module):
    """A tiny classifier whose output turns NaN on its `bad_call`-th training forward."""

    def __init__(self, in_chans, num_classes, bad_call):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chans, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.bad_call:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, tiny_sets):
    monkeypatch.setattr(engine_task, "build_model", lambda cfg, n, c: GoesNaN(c, n, bad_call=13))
    cfg = tiny_config(tmp_path, epochs=3, checkpoint_interval=3)
    with pytest.raises(engine.NonFiniteLoss) as e:
        engine.train(cfg, train_set=tiny_sets[0], val_set=tiny_sets[1])
    msg = str(e.value)
    assert "loss became nan at epoch 2 step 5/8 (global step 13)" in msg
    assert f"last good checkpoint: {tmp_path / 'run' / 'last.pt'}" in msg
    kept = load(tmp_path / "run" / "last.pt")
    assert kept["global_step"] == 12  # the checkpoint-interval save before the bad step
    for sd in (kept["state_dict"], kept["state_dict_ema"]):
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def test_nan_loss_leaves_a_diverged_record_that_resume_forgets(tmp_path, monkeypatch, tiny_sets):
    """metrics.jsonl says where the run diverged (ablate records such a run instead of retrying it);
    a resume from the last good checkpoint drops that line with the others written after it."""
    import json

    monkeypatch.setattr(engine_task, "build_model", lambda cfg, n, c: GoesNaN(c, n, bad_call=13))
    cfg = tiny_config(tmp_path, epochs=3)
    with pytest.raises(engine.NonFiniteLoss):
        engine.train(cfg, train_set=tiny_sets[0], val_set=tiny_sets[1])
    metrics = tmp_path / "run" / "metrics.jsonl"
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    diverged = [r for r in recs if r["type"] == "diverged"]
    assert len(diverged) == 1 and recs[-1] is diverged[0]
    assert (diverged[0]["epoch"], diverged[0]["step"], diverged[0]["global_step"]) == (2, 5, 13)
    assert diverged[0]["last_good_checkpoint"] is True  # epoch 1's
    metrics_log.trim_metrics(metrics, 1, 0)  # what --resume from that checkpoint does
    assert [r["type"] for r in map(json.loads, metrics.read_text().splitlines())].count("diverged") == 0
