"""`ghostnetv3 export | quantize | bench`: the way out of PyTorch, and what it costs.

    ghostnetv3 export runs/fmnist --format onnx --output model.onnx --dynamic-batch
    ghostnetv3 export runs/fmnist --format executorch --output model.pte     # or tflite, openvino
    ghostnetv3 quantize runs/fmnist --calib-data fashion-mnist [--format executorch|tflite|openvino]
    ghostnetv3 bench ghostnetv3_100 --batch-sizes 1,32 --threads 2 --report bench/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ghostnetv3.deploy.backends import EDGE_FORMATS, FORMATS
from ghostnetv3.engine.cli import add_threads_flag, apply_threads
from ghostnetv3.engine.weights import add_weights_flags
from ghostnetv3.paths import check_writable

_MODEL_HELP = "architecture of a checkpoint file without a config inside or beside it (e.g. ghostnetv3_100)"


def _input_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="model input (default: the run's in_chans and img_size, else 3 224 224)")


def _write_json(path: str | None, obj) -> None:
    if path == "-":  # bare --json: the table was not printed, JSON on stdout is the report
        print(json.dumps(obj, indent=2))
    elif path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2) + "\n")
        print(f"wrote {path}")


def _check_outputs(output: str | None = None, json_path: str | None = None, report: str | None = None) -> None:
    """Every destination checked before any work: a read-only folder or a path under a file is one
    line up front, not a traceback after the export."""
    if output:
        check_writable(output, "--output")
    if json_path and json_path != "-":
        check_writable(json_path, "--json")
    if report:
        check_writable(report, "--report", folder=True)


def add_parser(subparsers) -> None:
    _add_export(subparsers)
    _add_quantize(subparsers)
    _add_bench(subparsers)


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="fuse, export (ONNX, TorchScript, ExecuTorch, LiteRT, OpenVINO), verify against PyTorch",
        description="Fuse the model (eval mode), export it, then run the exported file in its own "
                    "runtime on sample inputs and fail (exit 1, nothing written) if it differs from "
                    "PyTorch by more than --tolerance. executorch (.pte, XNNPACK delegate), tflite "
                    "(LiteRT) and openvino (.xml + .bin) have a fixed input shape and a <file>.json "
                    "beside them saying what the model expects; they need pip install ghostnetv3[edge].")
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT|MODEL_NAME")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--output", "-o", required=True, metavar="FILE")
    p.add_argument("--model", default=None, help="architecture of a bare checkpoint file")
    p.add_argument("--num-classes", type=int, default=None, help="model name only: classes of the random head")
    _input_size(p)
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size (checked at 1 and 3)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="executorch/tflite/openvino: the file's fixed batch size (default 1)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |exported - PyTorch| allowed")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    add_weights_flags(p)
    add_threads_flag(p)
    p.set_defaults(func=run_export)


def _add_quantize(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize", help="static INT8 quantization (onnxruntime, ExecuTorch, LiteRT, OpenVINO) and its top-1 cost",
        description="Quantize a run (exported to fp32 first) or an ONNX file to INT8 with "
                    "calibration images, then report top-1 of fp32 vs INT8 on the eval split, each "
                    "run in its own runtime. Nothing is written unless every step succeeds.")
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT|MODEL.onnx")
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--format", choices=("onnx", *EDGE_FORMATS), default="onnx",
                   help="onnx (onnxruntime QDQ; default), executorch (XNNPACK PT2E), tflite (LiteRT "
                        "PT2E) or openvino (NNCF); the last three from a run or checkpoint")
    p.add_argument("--calib-data", default=None, metavar="NAME",
                   help="calibration dataset: fashion-mnist, elpv or a folder (its train split)")
    p.add_argument("--calib-size", type=int, default=512, help="calibration images (seeded subset)")
    p.add_argument("--eval-data", default=None, metavar="NAME", help="default: --calib-data")
    p.add_argument("--eval-split", default="val", help="split of --eval-data to score (default val)")
    p.add_argument("--eval-size", type=int, default=None, help="score only N images (seeded subset)")
    p.add_argument("--no-eval", action="store_true", help="quantize only")
    p.add_argument("--output", "-o", default=None, metavar="FILE",
                   help="INT8 file (default: RUN_DIR/deploy/model_int8.<ext> or MODEL.int8.onnx)")
    _input_size(p)
    p.add_argument("--calib-method", choices=("percentile", "minmax", "entropy", "histogram"), default=None,
                   help="activation range. onnx: percentile (99.999th; default), minmax or entropy; "
                        "executorch/tflite: histogram (default) or minmax; openvino: NNCF's own")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel (default on)")
    p.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8",
                   help="uint8 (U8S8, the fast kernels on x86; default) or int8 (S8S8)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="bare --json: print the report as JSON instead of the table; --json FILE: also write it")
    add_weights_flags(p)
    add_threads_flag(p)
    p.set_defaults(func=run_quantize)


def _add_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="params, MACs and latency of every backend: PyTorch, onnxruntime, OpenVINO, "
                      "ExecuTorch, LiteRT; fp32 and INT8",
        description="Params and MACs (train and fused form); latency median and p90 for each backend "
                    "and batch size. Each backend is timed in its own block (after its own warm-up), "
                    "never interleaved call by call with another runtime, and onnxruntime's threads "
                    "do not spin between runs: one runtime's idle threads cannot slow the next. The "
                    "blocks are repeated in --rounds passes, so a load spike on a shared machine hits "
                    "every backend alike.")
    p.add_argument("source", metavar="MODEL_NAME|RUN_DIR|CHECKPOINT")
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    _input_size(p)
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated (default 1,32)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for every backend "
                   "(default: torch's current setting)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--calib-data", default=None, metavar="NAME",
                   help="calibrate INT8 on this dataset (default: random images; latency only)")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 backends")
    p.add_argument("--backends", default="all", metavar="LIST",
                   help="comma-separated (torch, onnxruntime, openvino, executorch, litert) or 'all' "
                        "(default: every one installed; the others are listed as skipped)")
    p.add_argument("--rounds", type=int, default=3, help="passes over the backends (default 3)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write DIR/latency.md (markdown table), DIR/latency.png (bar chart), DIR/bench.json")
    p.add_argument("--train-form", action="store_true", help="also time the unfused model in eager")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="bare --json: print the report as JSON instead of the table; --json FILE: also write it")
    add_weights_flags(p)
    p.set_defaults(func=run_bench)


def run_export(args) -> int:
    from ghostnetv3.deploy.export import ExportMismatchError, export_model
    from ghostnetv3.deploy.load import load_for_deploy
    apply_threads(args.threads)
    _check_outputs(args.output, args.json)
    model, cfg = load_for_deploy(args.source, model=args.model, num_classes=args.num_classes,
                                 in_chans=args.input_size[0] if args.input_size else None,
                                 weights=args.weights, checkpoint=args.run_checkpoint)
    size = args.input_size or (cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    if args.input_size:
        cfg["in_chans"], cfg["img_size"] = size[0], size[1]
    weights = cfg.get("weights_from") or f"{cfg['weights']} weights"
    print(f"{cfg['model']} ({weights}) -> {args.format} at {'x'.join(map(str, size))}")
    try:
        report = export_model(model, args.output, args.format, size, dynamic_batch=args.dynamic_batch,
                              opset=args.opset, tolerance=args.tolerance, cfg=cfg, batch_size=args.batch_size)
    except ExportMismatchError as e:
        print(f"max |{args.format} - pytorch| = {e.max_diff:.3g}  FAIL (tolerance {args.tolerance:g})")
        raise
    print(f"max |{args.format} - pytorch| = {report['max_diff']:.3g}  ok (tolerance {args.tolerance:g}, "
          f"batch {', '.join(map(str, report['batch_sizes_checked']))})")
    print(f"wrote {', '.join(report.get('files', [report['output']]))} ({report['size_bytes'] / 1e6:.2f} MB)")
    _write_json(args.json, report)
    return 0


def run_quantize(args) -> int:
    from ghostnetv3.deploy.quantize import format_report, quantize
    apply_threads(args.threads)
    _check_outputs(args.output, args.json)
    report = quantize(args.source, args.calib_data, calib_size=args.calib_size, eval_data=args.eval_data,
                      eval_split=args.eval_split, eval_size=args.eval_size, output=args.output,
                      input_size=args.input_size, per_channel=args.per_channel,
                      calib_method=args.calib_method, activation_type=args.activation_type,
                      evaluate=not args.no_eval, weights=args.weights, checkpoint=args.run_checkpoint,
                      fmt=args.format, model=args.model,
                      log=print if args.json != "-" else (lambda m: None))
    if args.json != "-":
        print(format_report(report))
    _write_json(args.json, report)
    return 0


def run_bench(args) -> int:
    from ghostnetv3.deploy.bench import bench, format_table
    try:
        sizes = [int(s) for s in str(args.batch_sizes).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes: expected comma-separated integers, got '{args.batch_sizes}'") from None
    _check_outputs(json_path=args.json, report=args.report)
    result = bench(args.source, input_size=args.input_size, batch_sizes=sizes, threads=args.threads,
                   repeats=args.repeats, warmup=args.warmup, calib_data=args.calib_data,
                   int8=not args.no_int8, train_form=args.train_form, backends=args.backends,
                   rounds=args.rounds,
                   weights=args.weights, checkpoint=args.run_checkpoint, model=args.model,
                   log=print if args.json != "-" else (lambda m: None))
    if args.json != "-":
        print(format_table(result))
    if args.report:
        from ghostnetv3.deploy.bench import write_report
        for path in write_report(result, args.report):
            print(f"wrote {path}")
    _write_json(args.json, result)
    return 0
