"""Static INT8 post-training quantization with onnxruntime, and its accuracy cost.

QDQ format, weights per output channel (a fused kernel sums several BN-scaled branches, so
channel ranges can differ widely), only the MAC-carrying ops quantized. Activation ranges
default to the 99.999th percentile of the calibration histogram: with minmax, rare outliers set
the scale, and INT8 lost 0.7 (Fashion-MNIST) and 1.9 (elpv) top-1 points where percentile lost
0.2 and 0.0 (short CPU runs of ghostnetv3_050; per-tensor minmax lost 0.4 and 0.8).
Activations are uint8 (U8S8): onnxruntime's x86 kernels ran GhostNetV3-1.0 about 2x faster
than S8S8 here, and VNNI CPUs have no U8S8 saturation problem.
Calibration and evaluation images go through the data layer's eval transform and the training
run's split, i.e. exactly what the model saw at validation time. The data is read before
anything is exported, and every file is written into a staging folder beside the outputs and
moved into place only after every step passed: a failed `quantize` leaves no files.
`--format executorch|tflite|openvino` hands over to `quantize_edge.py`.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ghostnetv3.deploy.edge import EDGE_FORMATS
from ghostnetv3.deploy.steps import made_folders, sigterm_interrupts, step
from ghostnetv3.engine.inputs import describe_subset, eval_aug_config, subset_indices, val_subset_seed
from ghostnetv3.paths import check_writable

__all__ = ["quantize_onnx", "quantize", "eval_batches", "scored_batches", "onnx_top1", "CALIB_METHODS"]

CALIB_METHODS = ("minmax", "entropy", "percentile")
# Only the ops that carry the MACs. Quantizing everything also turned float shape arithmetic
# (timm's dynamic 'same' padding) into uint8 and broke the graph, and it bought no speed here.
QUANT_OP_TYPES = ("Conv", "Gemm", "MatMul")


def eval_batches(name: str, split: str, cfg: dict[str, Any], limit: Optional[int] = None,
                 batch_size: int = 64, seed: int = 0) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int]:
    """(iterator of (float32 NCHW images, int64 labels), count) from a dataset split.

    `limit` takes a seeded random subset (every class represented in proportion), so 512
    calibration images are not 512 images of the first class.
    """
    it, n, _ = _split_batches(name, split, cfg, limit, batch_size, seed)
    return it, n


def scored_batches(name: str, split: str, cfg: dict[str, Any], limit: Optional[int] = None,
                   batch_size: int = 256) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int, str]:
    """(batches, count, which images in words): the images `quantize` scores — for N = `limit`, the
    validation subset of size N that `eval --val-subset N` scores (engine.inputs: the run's split, the
    seed of its validation subset, its eval transform)."""
    run_seed = int(cfg.get("seed") or 0)
    it, n, total = _split_batches(name, split, cfg, limit, batch_size, val_subset_seed(run_seed))
    return it, n, describe_subset(n, total, run_seed, f"{name}:{split}")


def _split_batches(name: str, split: str, cfg: dict[str, Any], limit: Optional[int], batch_size: int,
                   seed: int) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int, int]:
    """eval_batches, plus the size of the whole split."""
    from ghostnetv3.data import BatchAugment, load_dataset
    # The split and the load-time resize exactly as training made them (engine.load_datasets).
    kw = {"image_size": int(cfg["img_size"])}
    if cfg.get("val_fraction") is not None:
        kw["val_fraction"] = float(cfg["val_fraction"])
    split_seed = cfg["split_seed"] if cfg.get("split_seed") is not None else cfg.get("seed")
    ds = load_dataset(name, split, seed=int(split_seed or 0), **kw)
    n = len(ds.labels)
    if n == 0:
        raise ValueError(f"dataset '{name}' split '{split}' has no images")
    picked = subset_indices(n, limit or None, seed)  # the engine's subset rule (engine.inputs)
    idx = torch.arange(n) if picked is None else picked
    aug = BatchAugment(eval_aug_config(cfg, int(cfg["in_chans"])), seed=seed)

    def it():
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            x = aug(ds.images[b], b, 0)
            yield x.numpy().astype(np.float32, copy=False), ds.labels[b].numpy()
    return it(), len(idx), n


def onnx_top1(paths: Sequence[str | os.PathLike], batches, threads: Optional[int] = None
              ) -> tuple[list[float], int]:
    """([top-1 accuracy in % of each ONNX classifier], images), in one pass over the batches."""
    from ghostnetv3.deploy.export import onnx_session
    sessions = [onnx_session(p, threads) for p in paths]
    return top1_of([lambda x, sess=sess: _run_batched(sess, x) for sess in sessions], batches)


def top1_of(predictors: Sequence[Callable[[np.ndarray], np.ndarray]], batches) -> tuple[list[float], int]:
    """([top-1 % of each predictor (images -> logits)], images), in one pass over the batches."""
    correct, total = [0] * len(predictors), 0
    for x, y in batches:
        for i, predict in enumerate(predictors):
            logits = predict(x)
            if int(y.max()) >= logits.shape[1]:
                raise ValueError(f"the eval data has labels up to {int(y.max())} but the model has "
                                 f"{logits.shape[1]} outputs: is --eval-data the data it was trained on?")
            correct[i] += int((logits.argmax(1) == y).sum())
        total += len(y)
    return [100.0 * c / max(total, 1) for c in correct], total


def _run_batched(sess, x: np.ndarray) -> np.ndarray:
    """Run a session on a batch; a static-batch model gets it in padded chunks."""
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    if fixed is None:
        return sess.run(None, {inp.name: x})[0]
    outs = []
    for i in range(0, len(x), fixed):
        c = x[i:i + fixed]
        if len(c) < fixed:
            c = np.concatenate([c, np.zeros((fixed - len(c),) + c.shape[1:], c.dtype)])
        outs.append(sess.run(None, {inp.name: c})[0])
    return np.concatenate(outs)[:len(x)]


class _Reader:
    """onnxruntime CalibrationDataReader over pre-computed batches."""

    def __init__(self, input_name: str, batches):
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self):
        x = next(self.batches, None)
        return None if x is None else {self.input_name: x}

    def rewind(self):  # not needed by static calibration; here for the protocol
        raise RuntimeError("calibration batches can be read once")


def even_batches(batches, fixed: Optional[int] = None) -> tuple[list[np.ndarray], int]:
    """(the calibration images in batches of one size, how many images). onnxruntime's histogram
    calibrators (percentile, entropy) stack the outputs of every batch into one array, so a short
    last batch failed with numpy's "inhomogeneous shape" (162 images: 64 + 64 + 34). A dynamic-batch
    model gets the largest size up to the largest batch given that divides the count (every image
    used once: 162 -> 3 x 54, a prime count -> batches of 1); a static-batch one (`fixed`) its own
    size, the last batch completed with the first images again."""
    parts = [np.asarray(x, dtype=np.float32) for x in batches if len(x)]
    if not parts:
        return [], 0
    images = np.concatenate(parts)
    n = len(images)
    if fixed:
        size = fixed
        if n % size:
            images = np.concatenate([images, images[np.arange(size - n % size) % n]])
    else:
        size = max(d for d in range(1, min(max(len(p) for p in parts), n) + 1) if n % d == 0)
    return [images[i:i + size] for i in range(0, len(images), size)], n


@contextlib.contextmanager
def _their_failure(what: str) -> Iterator[None]:
    """A ValueError raised inside a third-party call is its bug or limit, not the user's input:
    re-raised as RuntimeError, so the CLI keeps the traceback instead of one line that reads as
    the user's fault."""
    try:
        yield
    except ValueError as e:
        raise RuntimeError(f"{what} failed: {e}") from e


def quantize_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calib_batches,
                  per_channel: bool = True, calib_method: str = "percentile",
                  activation_type: str = "uint8",
                  op_types: Sequence[str] = QUANT_OP_TYPES) -> dict[str, Any]:
    """Pre-process (shape inference, graph folding) then quantize_static in QDQ format, calibrated
    on every image of `calib_batches` (float32 NCHW batches of any sizes)."""
    import onnx  # lazy: onnx / onnxruntime are the optional deploy extra
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if calib_method not in CALIB_METHODS:
        raise ValueError(f"calib method '{calib_method}': use one of {', '.join(CALIB_METHODS)}")
    if activation_type not in ("int8", "uint8"):
        raise ValueError(f"activation type '{activation_type}': use int8 or uint8")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calib_method]
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    reader_cls = type("Reader", (_Reader, CalibrationDataReader), {})
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        with _their_failure("onnxruntime's quantization pre-processing"):
            quant_pre_process(str(fp32_path), str(pre))
        graph_input = onnx.load(str(pre), load_external_data=False).graph.input[0]
        batch_dim = graph_input.type.tensor_type.shape.dim[0]
        calib, count = even_batches(calib_batches, batch_dim.dim_value if batch_dim.HasField("dim_value") else None)
        if count == 0:
            raise ValueError("no calibration images were read; check --calib-data and --calib-size")
        reader = reader_cls(graph_input.name, calib)
        with contextlib.redirect_stdout(io.StringIO()), _their_failure("onnxruntime's INT8 calibration"):
            quantize_static(str(pre), str(int8_path), reader, quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, calibrate_method=method,
                            activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
    _copy_metadata(fp32_path, int8_path)
    return {"calib_images": count, "calib_method": calib_method, "per_channel": per_channel,
            "activation_type": activation_type, "op_types": list(op_types), "format": "QDQ",
            "calib_batch": len(calib[0])}


def _copy_metadata(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    import onnx
    a = onnx.load(str(src), load_external_data=False)
    b = onnx.load(str(dst))
    have = {p.key for p in b.metadata_props}
    for p in a.metadata_props:
        if p.key not in have:
            b.metadata_props.add(key=p.key, value=p.value)
    onnx.save(b, str(dst))


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
        from ghostnetv3.deploy.quantize_edge import quantize_edge
        return quantize_edge(source, calib_data, fmt, calib_size=calib_size, eval_data=eval_data,
                             eval_size=eval_size, calib_split=calib_split, eval_split=eval_split,
                             output=output, input_size=input_size, per_channel=per_channel,
                             observer=calib_method or "histogram", seed=seed, evaluate=evaluate,
                             log=log, weights=weights, checkpoint=checkpoint, model=model)
    calib_method = calib_method or "percentile"
    if calib_method not in CALIB_METHODS:
        raise ValueError(f"--calib-method '{calib_method}' is not an onnxruntime method: use one of "
                         f"{', '.join(CALIB_METHODS)}")

    net = None
    if source.suffix == ".onnx":
        from ghostnetv3.deploy.export import read_metadata
        fp32_path = source
        int8_path = check_writable(Path(output) if output else source.with_name(source.stem + ".int8.onnx"))
        cfg = read_metadata(source)
    else:
        from ghostnetv3.deploy.load import load_for_deploy
        out_dir = output_dir(source, output)
        fp32_path = out_dir / "model_fp32.onnx"
        int8_path = check_writable(Path(output) if output else out_dir / "model_int8.onnx")
        net, cfg = load_for_deploy(str(source), weights=weights, checkpoint=checkpoint, model=model)
        log(f"{cfg['model']}: {cfg.get('weights_from', cfg['weights'] + ' weights')}")
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
        fp32_work = fp32_path
        if net is not None:
            from ghostnetv3.deploy.export import export_model
            fp32_work = stage / fp32_path.name
            rep = export_model(net, fp32_work, "onnx", (cfg["in_chans"], cfg["img_size"], cfg["img_size"]),
                               dynamic_batch=True, cfg=cfg, log=log)
            log(f"exported fp32 ONNX (max |onnx - torch| = {rep['max_diff']:.2g})")
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


def output_dir(source: Path, output: Optional[str]) -> Path:
    """Where a run's or checkpoint's fp32 and INT8 files go: beside --output, else RUN_DIR/deploy or
    CHECKPOINT_deploy."""
    if output:
        return Path(output).parent
    return source / "deploy" if source.is_dir() else source.with_name(source.stem + "_deploy")


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


@contextlib.contextmanager
def staging(directory: Path) -> Iterator[Path]:
    """A temporary folder beside the outputs (same filesystem, so moving out of it is atomic),
    removed on the way out with whatever is still in it, also on SIGTERM; folders made for the
    outputs go too if they stay empty (a failed run leaves no empty deploy/)."""
    import shutil
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


def _describe(source: Path) -> dict[str, Any]:
    import yaml
    if source.is_dir() and (source / "config.yaml").is_file():
        return yaml.safe_load((source / "config.yaml").read_text()) or {}
    if source.suffix == ".onnx" and source.is_file():
        from ghostnetv3.deploy.export import read_metadata
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
