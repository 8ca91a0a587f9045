"""Which optional package each deploy path needs, and the one line that says how to install it.

ONNX and onnxruntime are the `deploy` extra; the on-device runtimes (ExecuTorch, torchao, LiteRT,
OpenVINO, NNCF) the `edge` extra. Each backend lists the packages it needs (`PACKAGES`); a missing
one is a `MissingExtraError`, one line naming `pip install ghostnetv3[<extra>]`.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Optional, Sequence

from ghostnetv3.deploy.steps import quiet_output
from ghostnetv3.errors import UserError

__all__ = ["EXTRAS", "MissingExtraError", "require", "extra_of", "missing", "install_hint"]

# extra -> the top-level modules of its packages (pyproject.toml's optional dependencies)
EXTRAS = {
    "deploy": ("onnx", "onnxruntime"),
    "edge": ("executorch", "torchao", "litert_torch", "ai_edge_litert", "openvino", "nncf"),
}


class MissingExtraError(UserError, ImportError):
    """A runtime of an optional extra is not installed."""


def extra_of(package: str) -> Optional[str]:
    """The extra that installs top-level module `package` (None: not one of ours)."""
    return next((extra for extra, mods in EXTRAS.items() if package in mods), None)


def missing(packages: Sequence[str]) -> list[str]:
    """Those of `packages` (top-level modules) that are not installed."""
    return [m for m in packages if importlib.util.find_spec(m) is None]


def install_hint(packages: Sequence[str]) -> str:
    """`pip install ghostnetv3[<extra>]` for the extra of the first of `packages` that has one."""
    extra = next((e for e in map(extra_of, packages) if e), None)
    return f"pip install ghostnetv3[{extra}]"


def require(module: str, what: str):
    """Import `module` or say, in one line, which extra installs it. The import's own log lines
    (LiteRT's bundled TensorFlow prints absl and oneDNN notices, torchao a torch pytree deprecation)
    are silenced: they are not the user's business and buried our progress lines."""
    try:
        with quiet_output():
            return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if extra_of(top) is None:
            raise  # a broken install of something else: keep the traceback
        raise MissingExtraError(f"{what} needs the '{top}' package (missing): {install_hint([top])}") from e
