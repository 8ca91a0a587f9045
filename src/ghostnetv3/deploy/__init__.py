"""Deploy: fuse → export (ONNX / TorchScript, verified) → INT8 (onnxruntime) → benchmark.

    from ghostnetv3.deploy import load_for_deploy, export_model
    from ghostnetv3.deploy.quantize import quantize
    model, cfg = load_for_deploy("runs/fmnist")            # run dir | checkpoint | model name
    export_model(model, "m.onnx", "onnx", (1, 32, 32), dynamic_batch=True, cfg=cfg)
    quantize("m.onnx", "fashion-mnist")                    # -> m.int8.onnx + fp32 vs INT8 top-1

Names resolve lazily so `import ghostnetv3.deploy` (done by the CLI) costs nothing and onnx /
onnxruntime are needed only by the functions that use them.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_for_deploy": "load", "to_deploy_form": "prepare",
    "export_model": "export", "export_onnx": "export", "export_torchscript": "export",
    "verify_export": "export", "read_metadata": "export", "ExportMismatchError": "export",
    "input_contract": "contract", "read_input_contract": "contract",
    "quantize_onnx": "quantize",  # quantize() and bench() share their modules' names: import those
    "count_params_macs": "count",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
