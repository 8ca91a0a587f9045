"""Helpers for the command-line tests: run `ghostnetv3 ...` in a subprocess, as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def env(**extra) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args, timeout: float = 300, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ghostnetv3.cli", *map(str, args)], env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


# a GhostNetV3 small enough to train in seconds on two busy cores, spelled with timm's flags
TINY_TRAIN = ["--model", "ghostnetv3_050", "--width", "0.1", "--stem-stride", "2", "--input-size", "1", "32", "32",
              "--crop-mode", "pad_crop", "--train-subset", "64", "--val-subset", "48", "-b", "16", "-j", "0",
              "--epochs", "2", "--warmup-epochs", "0", "--drop", "0.1", "--data-dir", "fashion-mnist",
              "--model-ema-decay", "0.5", "--log-interval", "1", "--seed", "3"]
