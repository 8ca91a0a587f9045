"""`ghostnetv3 train | eval | plot`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import config as C


class _KeyParser(argparse.ArgumentParser):
    """Unknown --flags are an error naming the nearest recipe key (argparse only says 'unrecognized')."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        flags = [a for a in extras if a.startswith("--")]
        if flags:
            try:
                C.check_keys([flags[0].split("=", 1)[0]])
            except ValueError as e:
                self.error(str(e))
        if extras:
            self.error(f"unexpected argument {extras[0]!r}: recipe keys are given as --key value")
        return ns, extras


def add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One --flag per recipe key (dashes or underscores), each defaulting to 'not given'."""
    for f in dataclasses.fields(C.TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(dest=f"key_{f.name}", default=argparse.SUPPRESS, metavar="V",
                      help=f"(default: {f.default!r})" if f.default is not dataclasses.MISSING else None)
        if C.is_bool(f.name):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif C.is_sequence(f.name):
            kwargs.update(nargs="+")
        p.add_argument(*([flag] + ([f"--{f.name}"] if "_" in f.name else [])), **kwargs)


def add_train_parser(subparsers, name: str, func, **parser_kwargs) -> argparse.ArgumentParser:
    """A `-c RECIPE [--key value ...]` sub-command (train, detect train): every recipe key is a flag,
    and an unknown flag names the nearest key."""
    p = subparsers.add_parser(name, allow_abbrev=False, **parser_kwargs)
    p.__class__ = _KeyParser
    p.add_argument("-c", "--config", dest="recipe", metavar="RECIPE", help="YAML recipe")
    add_config_flags(p)
    p.set_defaults(func=func)
    return p


def add_parser(subparsers) -> None:
    add_train_parser(
        subparsers, "train", _cmd_train, help="train a model from a YAML recipe with --key value overrides",
        description="Train from a recipe (-c recipes/NAME.yaml); any recipe key can be overridden as "
                    "--key value (dashes or underscores). --batch-size is the GLOBAL batch: under "
                    "torchrun each of N processes takes batch_size/N. --resume RUN_DIR continues a run exactly.")

    e = subparsers.add_parser("eval", help="top-1/top-5 of a run: raw, EMA and fused EMA weights")
    e.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    e.add_argument("--data", help="dataset name or path (default: the run's)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--val-subset", type=int, help="evaluate only N images (seeded)")
    e.add_argument("--device")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(func=_cmd_eval)

    pl = subparsers.add_parser("plot", help="PNG training curves of a run (loss, lr, top-1 raw vs EMA)")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    pl.add_argument("-o", "--out", help="PNG path (default: RUN_DIR/curves.png)")
    pl.set_defaults(func=_cmd_plot)


def config_from_args(args: argparse.Namespace) -> C.TrainConfig:
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("key_")}
    overrides = {k: (v if not isinstance(v, list) else v if len(v) > 1 else v[0]) for k, v in overrides.items()}
    if args.recipe is None and overrides.get("resume"):
        # no recipe: continue with the run's own config
        from . import checkpoint as ckpt_io
        saved = ckpt_io.load(ckpt_io.find_checkpoint(overrides["resume"])).get("config")
        if saved is None:
            raise ValueError(f"{overrides['resume']} holds no training config; pass the recipe with -c")
        base = C.from_checkpoint_dict(saved).to_dict()
        base.update({k: C.coerce(k, v) for k, v in overrides.items()})
        return C.TrainConfig(**base)
    return C.load_config(args.recipe, **overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainingInterrupted, train

    cfg = config_from_args(args)
    try:
        summary = train(cfg)
    except TrainingInterrupted as e:
        print(f"ghostnetv3 train: {e}", file=sys.stderr)
        return 128 + e.signum
    if summary:
        print(json.dumps(summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, format_report

    r = evaluate_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size,
                            val_subset=args.val_subset, device=args.device)
    print(json.dumps(r) if args.json else format_report(r))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
