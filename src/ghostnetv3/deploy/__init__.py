"""Deploy: fuse → export (ONNX / TorchScript, verified) → INT8 (onnxruntime) → benchmark.

    from ghostnetv3.deploy import load_for_deploy, export_model
    from ghostnetv3.deploy.quantize import quantize
    model, cfg = load_for_deploy("runs/fmnist")            # run dir | checkpoint | model name
    export_model(model, "m.onnx", "onnx", (1, 32, 32), dynamic_batch=True, cfg=cfg)
    quantize("m.onnx", "fashion-mnist")                    # -> m.int8.onnx + fp32 vs INT8 top-1

Names resolve lazily so `import ghostnetv3.deploy` (done by the CLI) costs nothing and onnx /
onnxruntime are needed only by the functions that use them.

Where things live: `load` (run dir | checkpoint | name -> model), `prepare` (fuse, eval mode),
`backends/` (one file per format: export, INT8, runner, metadata; the table `BACKENDS`), `pt2e`
(the INT8 graph rewrites and annotations of ExecuTorch and LiteRT), `runner` (run a file on a
batch), `contract` (the input contract every file carries), `files` (sidecars, temporary names,
staging), `extras` (which pip extra a missing runtime needs), `openvino_thread`, `steps` (progress
lines, quiet third-party output, SIGTERM); the commands: `export`, `quantize` (+ `quantize_edge`),
`scoring` (calibration and scored images, top-1), `bench`, `cli`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_for_deploy": "load", "to_deploy_form": "prepare",
    "export_model": "export", "export_onnx": "export", "export_torchscript": "export",
    "verify_export": "export", "read_metadata": "export", "ExportMismatchError": "export",
    "input_contract": "contract", "read_input_contract": "contract",
    "quantize_onnx": "backends.onnx",  # quantize() and bench() share their modules' names: import those
    "count_params_macs": "ghostnetv3.rep.count",  # the counter lives with the branch math
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        where = _EXPORTS[name]
        module = where if where.startswith("ghostnetv3.") else f"{__name__}.{where}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
