"""TorchScript (`.pt`), run with `torch.jit`.

Export: traced and frozen (constants folded; the batch size stays free), the metadata as a JSON
extra file (files.META_KEY). No INT8 path: quantize to ONNX or an on-device format instead.
TorchScript is deprecated in PyTorch and still asked for; its FutureWarning is not the user's.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.files import META_KEY

__all__ = ["FORMAT", "SUFFIX", "FIXED_BATCH", "PACKAGES", "export", "load_runner", "read_metadata"]

FORMAT, SUFFIX, FIXED_BATCH = "torchscript", ".pt", False
PACKAGES: tuple[str, ...] = ()  # torch itself


def export(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int],
           meta: Optional[dict[str, Any]] = None) -> Path:
    """Write `model` (fused, eval mode), traced at batch 1, `meta` inside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, *input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
        traced = torch.jit.freeze(traced.eval())  # constants folded; batch size stays free
        torch.jit.save(traced, str(path), _extra_files={META_KEY: json.dumps(meta or {})})
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    files = {META_KEY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[META_KEY] or "{}")


def load_runner(path: str | os.PathLike, threads: Optional[int] = None
                ) -> tuple[Callable[[np.ndarray], np.ndarray], Optional[int]]:
    """(float32 NCHW batch -> logits, None: any batch size). `threads`: torch's own setting holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still the format asked for
        scripted = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return scripted(torch.from_numpy(x)).numpy()
    return run, None
