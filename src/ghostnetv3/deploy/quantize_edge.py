"""INT8 for the on-device formats, and its accuracy cost measured in the runtimes themselves.

ExecuTorch and LiteRT go through their PT2E quantizers (symmetric int8 activations, per-channel
weights by default, histogram activation observer; `--calib-method minmax` swaps the observer),
OpenVINO through NNCF (backends/). Calibration and evaluation images come from the data layer
exactly as in `quantize.py` (scoring.py: the training run's split and eval transform). fp32 and
INT8 files are both written, with their `.json` sidecars, after every check has passed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ghostnetv3.deploy.backends import EDGE_FORMATS, backend_for
from ghostnetv3.deploy.contract import export_metadata
from ghostnetv3.deploy.export import ExportMismatchError
from ghostnetv3.deploy.files import commit, file_size, output_dir, output_files, staging
from ghostnetv3.deploy.load import load_for_deploy
from ghostnetv3.deploy.prepare import to_deploy_form
from ghostnetv3.deploy.pt2e import OBSERVERS
from ghostnetv3.deploy.runner import open_runner
from ghostnetv3.deploy.scoring import eval_batches, scored_batches, top1_of
from ghostnetv3.deploy.steps import step
from ghostnetv3.paths import check_writable

__all__ = ["quantize_edge"]


def _max_diff(run, reference: torch.nn.Module, input_size, batch: int, seed: int = 0) -> float:
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = reference(x).numpy()
    return float(np.abs(run(x.numpy()) - ref).max())


def _int8_diffs(int8_run, reference: Optional[torch.nn.Module], fused: torch.nn.Module, size, batch: int
                ) -> dict[str, float]:
    """How far the lowered INT8 file is from the quantized PyTorch graph (rounding differs between
    kernels; reported, not enforced) and from the fp32 model."""
    out = {"int8_max_diff_vs_fp32": _max_diff(int8_run, fused, size, batch)}
    if reference is not None:
        out["int8_max_diff_vs_quantized_torch"] = _max_diff(int8_run, reference, size, batch)
    return out


def _check_request(source: Path, fmt: str, observer: str, output: Optional[str]) -> tuple[Path, Path, Path]:
    """The refusals that need neither model nor data: (output folder, fp32 file, INT8 file)."""
    if fmt not in EDGE_FORMATS:
        raise ValueError(f"unknown on-device format '{fmt}': use one of {', '.join(EDGE_FORMATS)}")
    if observer not in OBSERVERS:
        raise ValueError(f"--calib-method '{observer}' is not a {fmt} observer: use one of {', '.join(OBSERVERS)}")
    if source.suffix in (".onnx", *EDGE_FORMATS.values()):
        raise ValueError(f"{source}: {fmt} INT8 quantizes the PyTorch model; pass its run directory or "
                         f"checkpoint (or use --format onnx for an ONNX file)")
    suffix = EDGE_FORMATS[fmt]
    out_dir = output_dir(source, output)
    int8_path = Path(output) if output else out_dir / f"model_int8{suffix}"
    if int8_path.suffix != suffix:
        raise ValueError(f"--output {int8_path}: {fmt} files end in {suffix}")
    check_writable(int8_path)
    return out_dir, out_dir / f"model_fp32{suffix}", int8_path


def _export_fp32(fused, work: Path, fmt: str, size, batch_size: int, meta: dict, tolerance: float,
                 log: Callable[[str], None]) -> tuple[Callable, float]:
    """Write the fp32 file and check it against PyTorch in its runtime: (its runner, max |diff|)."""
    with step(log, f"writing fp32 {fmt} and checking it in its runtime"):
        backend_for(fmt).export(fused, work, size, batch_size, meta=meta)
        run = open_runner(work, fmt)
        diff = _max_diff(run, fused, size, batch_size)
    if not diff <= tolerance:
        raise ExportMismatchError(f"{fmt} fp32 output differs from PyTorch: max |diff| = {diff:.3g} > "
                                  f"tolerance {tolerance:g} (nothing written)", diff)
    log(f"exported fp32 {fmt} (max |{fmt} - torch| = {diff:.2g})")
    return run, diff


def quantize_edge(source: Path, calib_data: str, fmt: str, *, calib_size: int = 512,
                  eval_data: Optional[str] = None, eval_size: Optional[int] = None,
                  calib_split: str = "train", eval_split: str = "val", output: Optional[str] = None,
                  input_size: Optional[Sequence[int]] = None, per_channel: bool = True,
                  observer: str = "histogram", seed: int = 0, evaluate: bool = True,
                  batch_size: int = 1, tolerance: float = 1e-4, log: Callable[[str], None] = print,
                  weights: Optional[str] = None, checkpoint: Optional[str] = None,
                  model: Optional[str] = None) -> dict[str, Any]:
    """RUN_DIR | CHECKPOINT | MODEL_NAME -> fp32 and INT8 `fmt` files + fp32 vs INT8 top-1.
    `model`: the architecture of a checkpoint that does not say."""
    out_dir, fp32_path, int8_path = _check_request(source, fmt, observer, output)
    net, cfg = load_for_deploy(str(source), weights=weights, checkpoint=checkpoint, model=model)
    log(f"{cfg['model']}: {cfg.get('weights_from', cfg['weights'] + ' weights')}")
    if input_size:
        cfg["in_chans"], cfg["img_size"] = int(input_size[0]), int(input_size[1])
    size = (int(cfg["in_chans"]), int(cfg["img_size"]), int(cfg["img_size"]))
    # The data is read (and a wrong name reported) before anything is exported or written.
    calib, n_calib = eval_batches(calib_data, calib_split, cfg, calib_size, 64, seed)
    eval_name = eval_data or calib_data
    if evaluate:
        # the same seeded subset `eval --val-subset N` and `quantize --format onnx` score
        eval_iter, _, eval_which = scored_batches(eval_name, eval_split, cfg, eval_size)

    fused, _ = to_deploy_form(net, log=log)
    meta = export_metadata(cfg)
    report: dict[str, Any] = {"source": str(source), "format": fmt, "fp32_file": str(fp32_path),
                              "int8_file": str(int8_path), "calib_data": f"{calib_data}:{calib_split}",
                              "input_shape": [batch_size, *size]}
    with staging(out_dir) as stage:
        fp32_work, int8_work = stage / fp32_path.name, stage / ("int8_" + int8_path.name)
        fp32_run, diff = _export_fp32(fused, fp32_work, fmt, size, batch_size, meta, tolerance, log)
        with step(log, f"quantizing INT8 {fmt}: calibrating on {n_calib} images of {calib_data}:{calib_split} "
                       f"({observer} observer, {'per-channel' if per_channel else 'per-tensor'} weights), "
                       f"then lowering"):
            _, info, reference = backend_for(fmt).export_int8(fused, int8_work, size, (x for x, _ in calib),
                                                              batch_size, per_channel, observer, meta=meta)
            int8_run = open_runner(int8_work, fmt)
        report.update(info, fp32_max_diff=diff, fp32_size_bytes=file_size(fp32_work, fmt),
                      int8_size_bytes=file_size(int8_work, fmt),
                      **_int8_diffs(int8_run, reference, fused, size, batch_size))
        if evaluate:
            with step(log, f"scoring fp32 and INT8 {fmt} on {eval_which}"):
                (fp32_top1, int8_top1), n = top1_of([fp32_run, int8_run], eval_iter)
            report.update(eval_data=f"{eval_name}:{eval_split}", eval_images=n, eval_subset=eval_which,
                          fp32_top1=fp32_top1, int8_top1=int8_top1, top1_drop=fp32_top1 - int8_top1)
        del fp32_run, int8_run  # OpenVINO keeps the .bin mapped; let go before moving it
        commit(list(zip(output_files(fp32_work, fmt), output_files(fp32_path, fmt)))
               + list(zip(output_files(int8_work, fmt), output_files(int8_path, fmt))))
    report["files"] = [str(p) for p in output_files(fp32_path, fmt) + output_files(int8_path, fmt)]
    return report
