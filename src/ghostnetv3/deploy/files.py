"""The files one export writes, and how they reach their place.

Where the metadata lives: inside ONNX (metadata_props) and TorchScript (an extra file) under
`META_KEY`, as JSON; beside an on-device file as `<file>.json` (the sidecar). Which files make one
export (OpenVINO: `.xml` and `.bin`, then the sidecar). Every command writes under a temporary name
or into a staging folder beside the outputs and moves the files into place only after every check
passed: a failed command leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ghostnetv3.deploy.steps import made_folders, sigterm_interrupts

__all__ = ["META_KEY", "sidecar_path", "write_sidecar", "read_sidecar", "output_files", "file_size",
           "temporary_name", "commit_files", "discard_files", "size_from_shape", "staging", "commit",
           "output_dir"]

META_KEY = "ghostnetv3"  # ONNX metadata_props key / TorchScript extra-file name (JSON value)
# format -> files written beside the model file itself (the sidecar aside)
_COMPANIONS = {"openvino": (".bin",)}


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    side = sidecar_path(Path(path))
    side.write_text(json.dumps(meta, indent=2) + "\n")
    return side


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    side = sidecar_path(Path(path))
    return json.loads(side.read_text()) if side.is_file() else {}


def output_files(path: str | os.PathLike, fmt: str) -> list[Path]:
    """Every file one export writes (OpenVINO: .xml and .bin), sidecar last."""
    path = Path(path)
    return [path] + [path.with_suffix(s) for s in _COMPANIONS.get(fmt, ())] + [sidecar_path(path)]


def file_size(path: str | os.PathLike, fmt: str) -> int:
    """Bytes of the model itself (OpenVINO: .xml + .bin), not the sidecar."""
    return sum(f.stat().st_size for f in output_files(path, fmt)[:-1] if f.exists())


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path` (same folder, so moving it into place is atomic)."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def commit_files(tmp: Path, final: Path, fmt: str) -> None:
    """Move an export written under its temporary name into place, every file of it."""
    for src, dst in zip(output_files(tmp, fmt), output_files(final, fmt)):
        if src.exists():
            os.replace(src, dst)


def discard_files(tmp: Path, fmt: str) -> None:
    for f in output_files(tmp, fmt):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def size_from_shape(meta: dict[str, Any]) -> None:
    """Fill `in_chans` / `img_size` of `meta` from its fixed `input_shape` (N, C, H, W) where unset."""
    shape = meta.get("input_shape") or []
    if len(shape) == 4:
        if meta.get("in_chans") is None and shape[1]:
            meta["in_chans"] = shape[1]
        if meta.get("img_size") is None and shape[2] and shape[2] == shape[3]:
            meta["img_size"] = shape[2]


@contextlib.contextmanager
def staging(directory: Path) -> Iterator[Path]:
    """A temporary folder beside the outputs (same filesystem, so moving out of it is atomic),
    removed on the way out with whatever is still in it, also on SIGTERM; folders made for the
    outputs go too if they stay empty (a failed run leaves no empty deploy/)."""
    with sigterm_interrupts(), made_folders(directory):
        stage = Path(tempfile.mkdtemp(prefix=".tmp-quantize-", dir=directory))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def commit(moves: Sequence[tuple[Path, Path]]) -> None:
    for src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def output_dir(source: Path, output: Optional[str]) -> Path:
    """Where a run's or checkpoint's fp32 and INT8 files go: beside --output, else RUN_DIR/deploy or
    CHECKPOINT_deploy."""
    if output:
        return Path(output).parent
    return source / "deploy" if source.is_dir() else source.with_name(source.stem + "_deploy")
