"""What the three on-device backends (ExecuTorch, LiteRT, OpenVINO) share: a fixed input shape
(batch, C, H, W), which is what phones run and what these converters optimize best, and the
`<file>.json` sidecar that says what the model expects (files.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ghostnetv3.deploy.files import read_sidecar

__all__ = ["example_input", "file_meta", "sidecar_batch"]


def example_input(path: str | os.PathLike, input_size: Sequence[int], batch_size: int) -> tuple[Path, torch.Tensor]:
    """(the destination, its folder made; the zero input of the file's fixed shape)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, torch.zeros(batch_size, *input_size)


def file_meta(meta: Optional[dict[str, Any]], fmt: str, example: torch.Tensor, int8: bool,
              info: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The sidecar of an on-device file: the caller's metadata, the format, the fixed input shape,
    whether it is INT8 and how it was quantized."""
    return {**(meta or {}), "format": fmt, "input_shape": [int(s) for s in example.shape], "int8": int8,
            **(info or {})}


def sidecar_batch(path: str | os.PathLike) -> Optional[int]:
    """The fixed batch size an on-device file was exported with (its sidecar's input shape), None
    when it has no sidecar (a file exported elsewhere: fed whatever batch it is given)."""
    shape = read_sidecar(path).get("input_shape")
    return int(shape[0]) if shape else None
