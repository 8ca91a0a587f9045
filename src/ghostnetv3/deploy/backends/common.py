"""What the three on-device backends (ExecuTorch, LiteRT, OpenVINO) share: a fixed input shape
(batch, C, H, W), which is what phones run and what these converters optimize best, and the
`<file>.json` sidecar that says what the model expects (files.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.files import read_sidecar, write_sidecar
from ghostnetv3.deploy.pt2e import pt2e_quantize

__all__ = ["example_input", "file_meta", "sidecar_batch", "write_fp32", "write_pt2e_int8"]


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


# write(program, example, path, quantizer): a backend's converter; the quantizer is None for fp32
Writer = Callable[[nn.Module, torch.Tensor, Path, Any], None]


def write_fp32(write: Writer, fmt: str, model: nn.Module, path: str | os.PathLike, input_size: Sequence[int],
               batch_size: int, meta: Optional[dict[str, Any]]) -> Path:
    """`model` (fused, eval mode) through `write` with the fixed input (batch_size, *input_size), and its sidecar."""
    path, example = example_input(path, input_size, batch_size)
    write(model, example, path, None)
    write_sidecar(path, file_meta(meta, fmt, example, int8=False))
    return path


def write_pt2e_int8(write: Writer, fmt: str, quantizer_name: str, model: nn.Module, path: str | os.PathLike,
                    input_size: Sequence[int], calib: Iterable[np.ndarray], batch_size: int, per_channel: bool,
                    observer: str, meta: Optional[dict[str, Any]]) -> tuple[Path, dict[str, Any], nn.Module]:
    """PT2E INT8 through `write`: (path, quantization info, the quantized PyTorch graph: what the file
    should compute)."""
    path, example = example_input(path, input_size, batch_size)
    reference, quantizer, n = pt2e_quantize(model, example, calib, fmt, per_channel, observer)
    info = {"per_channel": per_channel, "observer": observer, "quantizer": quantizer_name, "calib_images": n}
    write(reference, example, path, quantizer)
    write_sidecar(path, file_meta(meta, fmt, example, int8=True, info=info))
    return path, info, reference
