"""Shared helpers for the engine tests: a tiny model on a small slice of real Fashion-MNIST.

timm's `test_efficientnet` (100k params, BN, dropout) at 16 px keeps a step well under a second on
two busy cores; GhostNetV3 itself is used where fusion matters (eval).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

# 256 train / 128 val images, batch 32: 8 steps per epoch.
TINY = dict(model="test_efficientnet", data="fashion-mnist", img_size=16, crop_mode="pad_crop", padding=2,
            train_subset=256, val_subset=128, batch_size=32, epochs=3, lr=0.05, warmup_epochs=1,
            model_ema_decay=0.9, drop_rate=0.2, log_interval=2, seed=7,
            # the layout is pinned: `auto` times both layouts, and two runs that pick different ones
            # differ in the last bits, which the bitwise resume tests would (rightly) report
            channels_last=False)


def tiny_config(tmp_path, **kw):
    from ghostnetv3.engine.config import TrainConfig
    return TrainConfig(**{**TINY, "output": str(tmp_path), "experiment": "run", **kw})


def cli_args(tmp_path, experiment="run", **kw) -> list[str]:
    args = []
    for k, v in {**TINY, "output": str(tmp_path), "experiment": experiment, **kw}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_cli(args: list[str], timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ghostnetv3.cli", *args], env=env(), capture_output=True,
                          text=True, timeout=timeout, **popen)


def popen_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ghostnetv3.cli", *args], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k} differs: max |diff| {(a[k].float() - b[k].float()).abs().max()}"
        else:
            torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=0, msg=lambda m: f"{k}: {m}")
