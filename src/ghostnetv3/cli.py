"""The `ghostnetv3` command line.

Each sub-command registers itself through `add_parser(subparsers)`; this file only lists them. A
package's own commands live in its `cli.py` (train, eval, export, ...); info, models, fuse and
predict live in `ghostnetv3/commands/`, so the library modules they drive (models, rep, predict)
never import the CLI layer.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ghostnetv3.engine.cli import check_threads
from ghostnetv3.errors import UserError

# (module, attribute) pairs: each module exposes `add_parser(subparsers)` which sets `func`.
_COMMANDS = [
    "ghostnetv3.commands.info",     # info, models
    "ghostnetv3.commands.predict",  # predict
    "ghostnetv3.commands.fuse",     # fuse
    "ghostnetv3.engine.cli",        # train, eval, plot
    "ghostnetv3.distill.cli",       # cache-teacher
    "ghostnetv3.deploy.cli",        # export, quantize, bench
    "ghostnetv3.detect.cli",        # detect train|eval|export|bench
    "ghostnetv3.ablate.cli",        # ablate
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghostnetv3",
        description="Train compact CNNs the GhostNetV3 way and ship them fused.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _COMMANDS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:  # a concern not built yet
            if e.name == mod_name:
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_threads(getattr(args, "threads", None))  # every command's --threads: a positive count
        rc = args.func(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        # Errors raised on purpose (bad flags, broken files, full disks): one clear line, no traceback.
        # Any other exception (a RuntimeError from torch, a KeyError) is a bug: it keeps its traceback.
        print(f"ghostnetv3 {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM while the first was being handled
        print(f"ghostnetv3 {args.command}: interrupted; files already written are intact (checkpoints are "
              f"saved atomically)", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
