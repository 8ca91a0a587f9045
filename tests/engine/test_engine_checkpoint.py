import errno
import random

import numpy as np
import pytest
import torch

from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.train import train

from engine_helpers import load, tiny_config


def test_atomic_save_survives_disk_full(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.atomic_save({"w": torch.arange(4.0), "step": 1}, path)

    def full_disk(obj, f):
        f.write(b"half a checkpoint")  # the disk fills part way through
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_io, "_write", full_disk)
    msg = r"could not save checkpoint .*last.pt \(disk full\); the previous last.pt is intact"
    with pytest.raises(RuntimeError, match=msg):
        ckpt_io.atomic_save({"w": torch.zeros(4), "step": 2}, path)
    old = load(path)
    assert old["step"] == 1 and torch.equal(old["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "temp file left behind"


def test_rng_state_roundtrip_is_weights_only_safe(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(3), np.random.rand(3), random.random(), np.random.randn()  # leave a cached gauss
    ckpt_io.atomic_save({"rng": ckpt_io.rng_state()}, tmp_path / "s.pt")
    expect = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.randn(3))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt_io.set_rng_state(load(tmp_path / "s.pt")["rng"])
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.randn(3))
    assert torch.equal(expect[0], got[0])
    assert np.array_equal(expect[1], got[1]) and expect[2] == got[2] and np.array_equal(expect[3], got[3])


def test_disk_full_during_training_keeps_previous_checkpoint(tmp_path, monkeypatch, tiny_sets):
    cfg = tiny_config(tmp_path, epochs=1, checkpoint_interval=2, model_ema=False)
    real_write, calls = ckpt_io._write, []

    def fail_second(obj, f):
        calls.append(obj["global_step"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(obj, f)

    monkeypatch.setattr(ckpt_io, "_write", fail_second)
    with pytest.raises(RuntimeError, match="disk full"):
        train(cfg, train_set=tiny_sets[0], val_set=tiny_sets[1])
    kept = load(tmp_path / "run" / "last.pt")
    assert calls == [2, 4] and kept["global_step"] == 2 and kept["step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
