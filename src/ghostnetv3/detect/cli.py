"""`ghostnetv3 detect train | eval | export | bench`.

    ghostnetv3 detect train -c recipes/detect_fashion.yaml --epochs 4 --experiment det
    ghostnetv3 detect train --resume runs/det
    ghostnetv3 detect eval runs/det
    ghostnetv3 detect export runs/det -o det.onnx
    ghostnetv3 detect bench runs/det --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    from ghostnetv3.engine.cli import add_train_parser

    det = subparsers.add_parser("detect", help="object detection with a GhostNet backbone (FCOS + FPN)",
                                description="Train, evaluate, export and time an FCOS detector whose backbone "
                                            "is a GhostNetV3 (train form, fused for deployment).")
    sub = det.add_subparsers(dest="detect_command", metavar="SUBCOMMAND")
    det.set_defaults(func=lambda args: (det.print_help(), 2)[1])

    add_train_parser(sub, "train", _cmd_train, help="train a detector from a YAML recipe with --key value overrides",
                     description="The same recipe keys and engine as `ghostnetv3 train` (EMA, schedules, "
                                 "checkpoints, exact --resume, torchrun DDP); --data is 'fashion-detect' "
                                 "(bundled) or a COCO folder (instances.json + images).")

    e = sub.add_parser("eval", help="COCO mAP@[.5:.95] and mAP@.5: raw, EMA, fused")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", help="detection data (default: the run's)")
    e.add_argument("--val-subset", type=int, help="evaluate only the first N val images")
    e.add_argument("--device")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="fuse the backbone, check fused vs unfused, export ONNX (.onnx) or "
                                      "TorchScript (.pt); exit 1 beyond --tolerance")
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("-o", "--output", required=True, metavar="FILE.onnx|FILE.pt")
    x.add_argument("--weights", choices=("raw", "ema"), help="default: the source of best.pt")
    x.add_argument("--tolerance", type=float, default=1e-3, help="max |difference| allowed (both checks)")
    x.set_defaults(func=_cmd_export)

    b = sub.add_parser("bench", help="latency of the whole detector (incl. NMS), train form vs fused")
    b.add_argument("spec", metavar="RUN_DIR|MODEL")
    b.add_argument("--img-size", type=int)
    b.add_argument("--batch-size", type=int, default=1)
    b.add_argument("--threads", type=int)
    b.add_argument("--repeats", type=int, default=20)
    b.set_defaults(func=_cmd_bench)


# what to do with a finished detection run (RUN: its directory)
NEXT_STEPS = "ghostnetv3 detect eval RUN  |  ghostnetv3 detect export RUN -o det.onnx  |  ghostnetv3 detect bench RUN"


def _cmd_train(args: argparse.Namespace) -> int:
    from ghostnetv3.engine.cli import config_from_args, format_summary, start_threads
    from ghostnetv3.engine.train import TrainingInterrupted, train

    from .task import DetectionTask

    cfg = config_from_args(args)
    start_threads(args.threads)
    try:
        summary = train(cfg, task=DetectionTask())
    except TrainingInterrupted as e:
        print(f"ghostnetv3 detect train: {str(e).replace('ghostnetv3 train', 'ghostnetv3 detect train')}",
              file=sys.stderr)
        return 128 + e.signum
    if summary:
        print(format_summary(summary, metric="map", label="mAP@[.5:.95]", next_steps=NEXT_STEPS))
        print(json.dumps(summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run, format_report

    r = evaluate_run(args.run_dir, data=args.data, val_subset=args.val_subset, device=args.device)
    print(json.dumps(r) if args.json else format_report(r))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ghostnetv3.deploy.export import ExportMismatchError

    from .evaluate import export_run

    try:
        r = export_run(args.run_dir, args.output, weights=args.weights, tolerance=args.tolerance)
    except ExportMismatchError as e:
        print(f"ghostnetv3 detect export: {e}", file=sys.stderr)
        return 1
    print(f"wrote {r['output']} ({r['format']}, {r['size_bytes'] / 1e6:.2f} MB): fused vs unfused "
          f"{r['detector_fusion_max_diff']:.3g}, file vs PyTorch {r['max_diff']:.3g} (tolerance {r['tolerance']:g})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .evaluate import bench_detector

    r = bench_detector(args.spec, img_size=args.img_size, batch_size=args.batch_size, threads=args.threads,
                       repeats=args.repeats)
    print(json.dumps(r, indent=2))
    return 0
