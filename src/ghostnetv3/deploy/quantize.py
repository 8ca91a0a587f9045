"""Static INT8 post-training quantization and its accuracy cost: `ghostnetv3 quantize`.

ONNX goes through onnxruntime's static QDQ quantization (backends/onnx.py says how and why);
`--format executorch|tflite|openvino` hands over to `quantize_edge.py`. Calibration and evaluation
images go through the data layer's eval transform and the training run's split, i.e. exactly what
the model saw at validation time (scoring.py). The data is read before anything is exported, and
every file is written into a staging folder beside the outputs and moved into place only after
every step passed: a failed `quantize` leaves no files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ghostnetv3.deploy.backends import EDGE_FORMATS
from ghostnetv3.deploy.backends.onnx import CALIB_METHODS, quantize_onnx
from ghostnetv3.deploy.export import export_model, read_metadata
from ghostnetv3.deploy.files import commit, output_dir, staging
from ghostnetv3.deploy.load import load_for_deploy
from ghostnetv3.deploy.quantize_edge import quantize_edge
from ghostnetv3.deploy.runner import open_runner
from ghostnetv3.deploy.scoring import eval_batches, scored_batches, top1_of
from ghostnetv3.deploy.steps import step
from ghostnetv3.engine.run import Run
from ghostnetv3.paths import check_writable

# quantize_onnx, eval_batches and scored_batches live in backends/onnx.py and scoring.py; named here too
__all__ = ["quantize", "quantize_onnx", "eval_batches", "scored_batches", "onnx_top1", "format_report",
           "refuse_exported", "CALIB_METHODS"]


def onnx_top1(paths: Sequence[str | os.PathLike], batches, threads: Optional[int] = None
              ) -> tuple[list[float], int]:
    """([top-1 accuracy in % of each ONNX classifier], images), in one pass over the batches."""
    return top1_of([open_runner(p, "onnx", threads) for p in paths], batches)


def quantize(source: str | os.PathLike, calib_data: Optional[str], *, calib_size: int = 512,
             eval_data: Optional[str] = None, eval_size: Optional[int] = None,
             calib_split: str = "train", eval_split: str = "val", output: Optional[str] = None,
             input_size: Optional[tuple[int, int, int]] = None, per_channel: bool = True,
             calib_method: Optional[str] = None, activation_type: str = "uint8", batch_size: int = 64,
             seed: int = 0, evaluate: bool = True, log: Callable[[str], None] = print,
             weights: Optional[str] = None, checkpoint: Optional[str] = None,
             fmt: str = "onnx", model: Optional[str] = None) -> dict[str, Any]:
    """RUN_DIR | CHECKPOINT | MODEL.onnx -> INT8 file, plus fp32 vs INT8 top-1 on `eval_data`.
    `model`: the architecture of a checkpoint that does not say (no config inside or beside it).

    `fmt` onnx (onnxruntime QDQ) or an on-device format (executorch, tflite, openvino; a run
    directory or checkpoint only). The model is fused and exported to fp32 first (next to the
    INT8 file). `eval_data` defaults to `calib_data` (its `eval_split`: images not calibrated on).
    Every check (data, model, export) runs before anything is written: a failed run leaves no files.
    """
    source = Path(str(source))
    _refuse_early(source, fmt, calib_data, calib_size)
    if fmt in EDGE_FORMATS:
        return quantize_edge(source, calib_data, fmt, calib_size=calib_size, eval_data=eval_data,
                             eval_size=eval_size, calib_split=calib_split, eval_split=eval_split,
                             output=output, input_size=input_size, per_channel=per_channel,
                             observer=calib_method or "histogram", seed=seed, evaluate=evaluate,
                             log=log, weights=weights, checkpoint=checkpoint, model=model)
    calib_method = calib_method or "percentile"
    if calib_method not in CALIB_METHODS:
        raise ValueError(f"--calib-method '{calib_method}' is not an onnxruntime method: use one of "
                         f"{', '.join(CALIB_METHODS)}")
    net, cfg, fp32_path, int8_path = _onnx_source(source, output, weights, checkpoint, model, log)
    if input_size:
        cfg["in_chans"], cfg["img_size"] = int(input_size[0]), int(input_size[1])
    if not cfg.get("img_size") or not cfg.get("in_chans"):
        raise ValueError(f"{source}: input size unknown (dynamic in the file, no metadata); pass --input-size C H W")
    # The data is read (and a wrong name reported) before anything is exported or written.
    batches, n_calib = eval_batches(calib_data, calib_split, cfg, calib_size, batch_size, seed)
    eval_name = eval_data or calib_data
    if evaluate:
        eval_iter, _, eval_which = scored_batches(eval_name, eval_split, cfg, eval_size)

    report = {"source": str(source), "fp32_onnx": str(fp32_path),
              "int8_onnx": str(int8_path), "calib_data": f"{calib_data}:{calib_split}"}
    with staging(int8_path.parent) as stage:
        fp32_work = fp32_path if net is None else _export_fp32(net, stage / fp32_path.name, cfg, log)
        int8_work = stage / int8_path.name
        with step(log, f"calibrating INT8 on {n_calib} images of {calib_data}:{calib_split} ({calib_method}, "
                       f"{'per-channel' if per_channel else 'per-tensor'} weights)"):
            report.update(quantize_onnx(fp32_work, int8_work, (x for x, _ in batches), per_channel,
                                        calib_method, activation_type))
        report["fp32_size_bytes"] = Path(fp32_work).stat().st_size
        report["int8_size_bytes"] = int8_work.stat().st_size
        if evaluate:
            with step(log, f"scoring fp32 and INT8 on {eval_which}"):
                (fp32_top1, int8_top1), n = onnx_top1([fp32_work, int8_work], eval_iter)
            report.update(eval_data=f"{eval_name}:{eval_split}", eval_images=n, eval_subset=eval_which,
                          fp32_top1=fp32_top1, int8_top1=int8_top1, top1_drop=fp32_top1 - int8_top1)
        moves = [(int8_work, int8_path)] + ([(fp32_work, fp32_path)] if net is not None else [])
        commit(moves)
    return report


def _onnx_source(source: Path, output: Optional[str], weights: Optional[str], checkpoint: Optional[str],
                 model: Optional[str], log: Callable[[str], None]) -> tuple[Any, dict[str, Any], Path, Path]:
    """(the PyTorch model or None for an fp32 .onnx file, its description, the fp32 and INT8 paths)."""
    if source.suffix == ".onnx":
        int8_path = check_writable(Path(output) if output else source.with_name(source.stem + ".int8.onnx"))
        return None, read_metadata(source), source, int8_path
    out_dir = output_dir(source, output)
    int8_path = check_writable(Path(output) if output else out_dir / "model_int8.onnx")
    net, cfg = load_for_deploy(str(source), weights=weights, checkpoint=checkpoint, model=model)
    log(f"{cfg['model']}: {cfg.get('weights_from', cfg['weights'] + ' weights')}")
    return net, cfg, out_dir / "model_fp32.onnx", int8_path


def _export_fp32(net, path: Path, cfg: dict[str, Any], log: Callable[[str], None]) -> Path:
    """The run's model as a checked fp32 ONNX file with a dynamic batch."""
    rep = export_model(net, path, "onnx", (cfg["in_chans"], cfg["img_size"], cfg["img_size"]),
                       dynamic_batch=True, cfg=cfg, log=log)
    log(f"exported fp32 ONNX (max |onnx - torch| = {rep['max_diff']:.2g})")
    return path


def _refuse_early(source: Path, fmt: str, calib_data: Optional[str], calib_size: int) -> None:
    """The refusals that need neither the model nor the data."""
    if fmt != "onnx" and fmt not in EDGE_FORMATS:
        raise ValueError(f"--format '{fmt}': use onnx or one of {', '.join(EDGE_FORMATS)}")
    if not calib_data:
        try:
            trained_on = _describe(source).get("data")
        except Exception:  # noqa: BLE001 - the hint is optional
            trained_on = None
        hint = f"; this model was trained on '{trained_on}'" if trained_on else ""
        raise ValueError("static INT8 quantization needs calibration images: pass --calib-data NAME "
                         f"(fashion-mnist, elpv or a folder of class folders){hint}")
    if calib_size < 1:
        raise ValueError(f"--calib-size must be at least 1 (got {calib_size})")
    refuse_exported(source, fmt)


def refuse_exported(source: Path, fmt: str) -> None:
    """An exported on-device file (or an ONNX file for an on-device format) cannot be quantized:
    say what can."""
    suffixes = {v: k for k, v in EDGE_FORMATS.items()}
    if source.suffix in suffixes:
        raise ValueError(f"{source} is an exported {suffixes[source.suffix]} file; INT8 starts from the model "
                         f"itself: pass the run directory or checkpoint it came from (with --model NAME "
                         f"for a checkpoint without a config), e.g. `ghostnetv3 quantize RUN_DIR --format "
                         f"{suffixes[source.suffix]} --calib-data DATA`, or an fp32 .onnx file")
    if fmt in EDGE_FORMATS and source.suffix == ".onnx":
        raise ValueError(f"{source}: {fmt} INT8 quantizes the PyTorch model; pass its run directory or "
                         f"checkpoint (or use --format onnx for an ONNX file)")


def _describe(source: Path) -> dict[str, Any]:
    if source.is_dir():
        return Run(source).yaml_config()
    if source.suffix == ".onnx" and source.is_file():
        return read_metadata(source)
    return {}


def format_report(r: dict[str, Any]) -> str:
    files = (r["fp32_onnx"], r["int8_onnx"]) if "int8_onnx" in r else (r["fp32_file"], r["int8_file"])
    rows = [("model", "top-1 (%)", "size (MB)", "file"),
            ("fp32", f"{r['fp32_top1']:.2f}" if "fp32_top1" in r else "-", f"{r['fp32_size_bytes'] / 1e6:.2f}", files[0]),
            ("int8", f"{r['int8_top1']:.2f}" if "int8_top1" in r else "-", f"{r['int8_size_bytes'] / 1e6:.2f}", files[1])]
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    if "eval_images" in r:
        lines.append(f"eval: {r.get('eval_subset') or str(r['eval_images']) + ' images of ' + r['eval_data']}; "
                     f"calibration: {r['calib_images']} images of {r['calib_data']}; "
                     f"top-1 drop {r['top1_drop']:+.2f} points")
    return "\n".join(lines)
