"""`ghostnetv3 predict SOURCE IMAGE... [--topk 5]`: the command line of `ghostnetv3.predict`."""
from __future__ import annotations

import json

import ghostnetv3.predict as prediction
from ghostnetv3.engine.cli import add_threads_flag, apply_threads
from ghostnetv3.engine.weights import add_weights_flags

__all__ = ["add_parser"]


def _cmd(args) -> int:
    apply_threads(args.threads)
    r = prediction.predict(args.source, args.images, topk=args.topk, weights=args.weights,
                           checkpoint=args.run_checkpoint, model=args.model, num_classes=args.num_classes,
                           in_chans=args.in_chans, img_size=args.img_size, on_bad_image=args.on_bad_image,
                           threads=args.threads)
    print(json.dumps(r) if args.json else prediction.format_predictions(r))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="top-k classes of images from a run, checkpoint, model name or exported file",
        description="Classify images with the fused model `export` writes, or with an exported file "
                    "(.onnx, .tflite, .pte, .xml) run in its own runtime and fed as the file says. "
                    "Class names come from the run (and from files exported by `ghostnetv3 export`).")
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT|MODEL|FILE.onnx|.tflite|.pte|.xml")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (their images, recursively) or quoted glob patterns")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default: 5)")
    add_weights_flags(p)
    p.add_argument("--model", default=None, metavar="NAME",
                   help="architecture of a checkpoint saved without its config (e.g. ghostnetv3_100)")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="classes of such a checkpoint (default: read from its head)")
    p.add_argument("--in-chans", type=int, default=None, metavar="N",
                   help="input channels, 1 or 3 (default: the run's, else read from the weights)")
    p.add_argument("--img-size", type=int, default=None, metavar="N",
                   help="input side in pixels (default: the run's or the exported file's, else 224)")
    p.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                   help="an unreadable image: fail naming it (default), or skip it and list it")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_threads_flag(p)
    p.set_defaults(func=_cmd)
