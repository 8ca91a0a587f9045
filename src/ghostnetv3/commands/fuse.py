"""`ghostnetv3 fuse`: load (or build) a model, fuse its branches, verify, save the fused weights."""
from __future__ import annotations

import torch

from ghostnetv3.engine.run import Run
from ghostnetv3.models import create_model, load_checkpoint, save_state_dict
from ghostnetv3.rep import has_branches, reparameterize, verify_fusion

from .model_flags import add_model_args, model_kwargs, parse_input_size

__all__ = ["run_fuse", "add_parser"]


def run_fuse(args) -> int:
    size = parse_input_size(args.input_size)
    model = create_model(args.model, num_classes=args.num_classes, in_chans=size[0], **model_kwargs(args))
    if args.checkpoint:
        choice = Run(args.checkpoint).choose("raw" if args.no_ema else args.weights)
        load_checkpoint(model, choice.state, use_ema=choice.use_ema)
        print(f"loaded {choice.describe()}")
    model.eval()
    fused = reparameterize(model)
    if has_branches(fused):
        raise RuntimeError("fusion left re-parameterizable modules behind; please report this model")
    torch.manual_seed(0)
    x = torch.randn(args.verify_batch, *size)
    diff = verify_fusion(model, fused, x)
    print(f"fused {args.model}: max |train form - fused| = {diff:.3e} on {args.verify_batch} random inputs "
          f"{size[0]}x{size[1]}x{size[2]}")
    if diff > args.tolerance:
        print(f"error: difference {diff:.3e} exceeds tolerance {args.tolerance:.1e}")
        return 1
    if args.output:
        save_state_dict(fused.state_dict(), args.output,
                        metadata={"model": args.model, "form": "fused", "num_classes": args.num_classes,
                                  "input_size": list(size), "max_abs_diff": f"{diff:.3e}"})
        print(f"saved fused weights to {args.output}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("fuse", help="fuse re-parameterization branches, verify, save")
    add_model_args(p)
    p.add_argument("--checkpoint", default=None, metavar="FILE|RUN_DIR",
                   help="weights to load (any known layout); a run directory means its best.pt "
                        "(pass RUN_DIR/last.pt for the last)")
    p.add_argument("--weights", choices=("raw", "ema"), default=None,
                   help="raw or EMA weights (default: the ones the run's validation picked, else EMA if any)")
    p.add_argument("--no-ema", action="store_true", help="same as --weights raw")
    p.add_argument("--output", "-o", default=None, help="where to save the fused weights (.safetensors)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--verify-batch", type=int, default=2)
    p.set_defaults(func=run_fuse)
