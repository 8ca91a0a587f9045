"""Deploy backends, one file each, dispatched from one table: format -> backend module.

Every backend module has the same surface:

- `FORMAT`, `SUFFIX`, `FIXED_BATCH` (the file has one batch size), `PACKAGES` (what it needs
  beyond torch; extras.py names the pip extra that installs them);
- `export(model, path, input_size, ...)`: write the fused model, its metadata inside or beside it;
- INT8: `export_int8(model, path, input_size, calib, ...)` for the on-device formats (PT2E or
  NNCF, from the PyTorch model), `quantize_onnx(fp32_path, int8_path, calib, ...)` for ONNX
  (onnxruntime, from the fp32 file); TorchScript has none;
- `load_runner(path, threads)`: (float32 NCHW batch -> logits, the file's fixed batch or None);
  runner.open_runner wraps it into the one batch runner every command uses;
- `read_metadata(path)`: what `export` stored.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ghostnetv3.deploy.backends import executorch, litert, onnx, openvino, torchscript

__all__ = ["BACKENDS", "FORMATS", "EDGE_FORMATS", "INT8_FORMATS", "backend_for", "backend_of_file"]

BACKENDS: dict[str, ModuleType] = {m.FORMAT: m for m in (onnx, torchscript, executorch, litert, openvino)}
FORMATS = tuple(BACKENDS)
# the on-device formats (a fixed input shape, a sidecar) -> file suffix
EDGE_FORMATS = {f: m.SUFFIX for f, m in BACKENDS.items() if m.FIXED_BATCH}
# formats with an INT8 path from the PyTorch model (`export_int8`)
INT8_FORMATS = tuple(f for f, m in BACKENDS.items() if hasattr(m, "export_int8"))


def backend_for(fmt: str) -> ModuleType:
    """The backend module of format `fmt`; an unknown format is a ValueError naming the known ones."""
    if fmt not in BACKENDS:
        raise ValueError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    return BACKENDS[fmt]


def backend_of_file(path: str | Path) -> ModuleType:
    """The backend that reads `path`, by its suffix; anything else is taken for TorchScript (a
    traced module may be saved under any name)."""
    suffix = Path(path).suffix
    return next((m for m in BACKENDS.values() if m.SUFFIX == suffix), torchscript)
