"""`ghostnetv3 train | eval | plot`."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import checkpoint as ckpt_io
from . import config as C
from . import flags as F
from . import rundir
from .weights import add_weights_flags

if TYPE_CHECKING:
    from .run import Run


def _suggest(flag: str, options: list[str]) -> str | None:
    """The option a mistyped flag most likely meant: same words in another order first, then spelling."""
    words = set(flag.lstrip("-").replace("_", "-").split("-"))
    longs = [o for o in options if o.startswith("--")]
    same = [o for o in longs if set(o[2:].split("-")) == words]
    if same:
        return same[0]
    near = difflib.get_close_matches(flag.replace("_", "-"), longs, n=1, cutoff=0.6)
    return near[0] if near else None


class _KeyParser(argparse.ArgumentParser):
    """Unknown --flags are an error naming the nearest flag (argparse only says 'unrecognized'), and
    `--help` after `-c RECIPE` shows the recipe's values as the defaults."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if "-h" in args or "--help" in args:
            self._show_recipe_defaults(args)
        ns, extras = super().parse_known_args(args, namespace)
        flags = [a for a in extras if a.startswith("-")]
        if flags:
            flag = flags[0].split("=", 1)[0]
            options = [o for a in self._actions if a.help is not argparse.SUPPRESS for o in a.option_strings]
            near = _suggest(flag, options)
            self.error(f"unknown flag {flag}" + (f"; did you mean {near}?" if near else
                                                  f"; see `{self.prog} --help`"))
        if extras:
            self.error(f"unexpected argument {extras[0]!r}: recipe keys are given as --key value")
        return ns, extras

    def error(self, message):
        # one line, no usage block: with ~80 flags it would bury the message
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _show_recipe_defaults(self, args: list[str]) -> None:
        recipe = None
        for i, a in enumerate(args):
            if a in ("-c", "--config") and i + 1 < len(args):
                recipe = args[i + 1]
            elif a.startswith("--config="):
                recipe = a.split("=", 1)[1]
        try:  # a recipe that cannot be read shows the plain defaults; running it gives the error
            data = C.read_yaml(C.find_recipe(recipe)) if recipe else None
        except (FileNotFoundError, ValueError):
            return
        if not isinstance(data, dict):
            return
        values = {C.normalize_key(k): v for k, v in data.items()}
        for action in self._actions:
            key = action.dest[4:] if action.dest.startswith("key_") else None
            # a hidden spelling (--key_name) stays hidden: its help is argparse.SUPPRESS, not text
            if key in values and action.help and action.help is not argparse.SUPPRESS:
                action.help = action.help.rsplit(" (default:", 1)[0] + f" (recipe: {values[key]!r})".replace("%", "%%")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f" (default: {f.default!r})"
    return ""


def _parse_input_size(values: list[str]) -> tuple[int | None, int]:
    """timm's --input-size C H W (or H W, or S) -> (in_chans or None, img_size); only square images."""
    try:
        v = [int(x) for x in values]
    except ValueError:
        raise ValueError(f"--input-size: expected numbers (C H W), got {' '.join(values)}") from None
    if len(v) not in (1, 2, 3):
        raise ValueError(f"--input-size takes C H W (or H W, or S), got {len(v)} numbers")
    c, hw = (v[0], v[1:]) if len(v) == 3 else (None, v)
    if len(hw) == 2 and hw[0] != hw[1]:
        raise ValueError(f"--input-size {' '.join(values)}: only square images are trained (H == W); "
                         f"use --img-size {max(hw)}")
    return c, hw[0]


class _InputSize(argparse.Action):
    def __call__(self, parser, ns, values, option_string=None):
        try:
            c, s = _parse_input_size(values)
        except ValueError as e:
            parser.error(str(e))
        if c is not None:
            ns.key_in_chans = str(c)
        ns.key_img_size = str(s)


def _metavar(name: str) -> str:
    base = C._base_type(C._HINTS[name])[0]
    return {int: "N", float: "X"}.get(base, "NAME" if name in ("model", "teacher", "opt", "sched") else "V")


def _bare_amp() -> str:
    return "fp16" if torch.cuda.is_available() else "bf16"


def add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), keys: tuple[str, ...] | None = None,
                     aliases: bool = True) -> None:
    """One --flag per recipe key (dashes or underscores), each defaulting to 'not given', in groups (data,
    model, optimisation, EMA, KD, run) with one line of help; timm's spellings as aliases.
    `keys`: only these are shown in --help (e.g. cache-teacher, which does not train); the others are
    still accepted, so the flags a run was trained with can be passed unchanged."""
    fields = [f for f in dataclasses.fields(C.TrainConfig) if f.name not in skip]
    shown = [f for f in fields if keys is None or f.name in keys]
    groups = {g: p.add_argument_group(g) for g in F.group_order() if any(F.group_of(f.name) == g for f in shown)}
    hidden = p.add_argument_group("accepted, not used here")
    alias_of: dict[str, list[str]] = {}
    if aliases:
        for alias, key in F.ALIASES.items():
            alias_of.setdefault(key, []).append(alias)
    for f in fields:
        visible = keys is None or f.name in keys
        g = groups[F.group_of(f.name)] if visible else hidden
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + alias_of.get(f.name, [])
        help_ = F.help_text(f.name).replace("%", "%%")  # argparse formats help strings with %
        kwargs = dict(dest=f"key_{f.name}", default=argparse.SUPPRESS, metavar=_metavar(f.name))
        if f.name in F.CHOICES:
            kwargs.update(choices=F.CHOICES[f.name], metavar="{" + ",".join(F.CHOICES[f.name]) + "}")
        if C.is_bool(f.name):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif C.is_sequence(f.name):
            kwargs.update(nargs="+")
        if f.name == "amp" and aliases:  # timm's bare --amp: mixed precision on
            kwargs.update(nargs="?", const=_bare_amp())
            help_ += "; bare --amp: fp16 on CUDA, bf16 on CPU"
        g.add_argument(*names, help=help_ + _default_text(f).replace("%", "%%") if visible else argparse.SUPPRESS,
                       **kwargs)
        if "_" in f.name:  # --key_name works too, without doubling the help
            g.add_argument(f"--{f.name}", help=argparse.SUPPRESS, **kwargs)
        if f.name == "model_ema" and aliases:
            g.add_argument("--no-model-ema", dest="key_model_ema", action="store_const", const="false",
                           default=argparse.SUPPRESS,
                           help="timm's spelling of --model-ema false" if visible else argparse.SUPPRESS)
        if f.name == "img_size" and aliases and (keys is None or "in_chans" in keys):
            g.add_argument("--input-size", nargs="+", action=_InputSize, metavar="N", default=argparse.SUPPRESS,
                           help="timm's C H W (or H W, or S): sets --in-chans and --img-size (square only)")


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), shared among torchrun's local processes;
    OMP_NUM_THREADS wins when set (e.g. by `ghostnetv3 ablate --threads`)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


THREADS_HELP = ("torch intra-op threads, a positive count (default: OMP_NUM_THREADS if set, else the cores this "
                "process may use, divided among torchrun's local processes)")


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """--threads N, meaning the same on every command: torch.set_num_threads(N) (see `apply_threads`)."""
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


def check_threads(threads: int | None) -> None:
    """--threads 0 (or less) is refused, not read as "the default": a timm user means a count."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: give a positive number of threads (1 or more), or leave it out "
                         f"for the default ({default_threads()} here)")


def apply_threads(threads: int | None, log=None, busy_note: bool = False) -> int:
    """torch.set_num_threads(--threads or the default). With `busy_note` (the training commands, whose
    minutes it is about), `log` (default: stderr) gets the note that a busy machine makes several OpenMP
    threads slower than one; the short commands stay quiet. Returns the count."""
    check_threads(threads)
    n = threads or default_threads()
    torch.set_num_threads(n)
    hint = busy_machine_hint(n) if busy_note else None
    if hint and os.environ.get("RANK", "0") == "0":
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(hint)
    return n


def add_train_parser(subparsers, name: str, func, **parser_kwargs) -> argparse.ArgumentParser:
    """A `-c RECIPE [--key value ...]` sub-command (train, detect train): every recipe key is a flag,
    and an unknown flag names the nearest one."""
    p = subparsers.add_parser(name, allow_abbrev=False, **parser_kwargs)
    p.__class__ = _KeyParser
    p.add_argument("-c", "--config", dest="recipe", metavar="RECIPE",
                   help="YAML recipe (recipes/*.yaml); with --help, shows the recipe's values")
    add_threads_flag(p)
    add_config_flags(p)
    p.set_defaults(func=func)
    return p


def add_parser(subparsers) -> None:
    add_train_parser(
        subparsers, "train", _cmd_train, help="train a model from a YAML recipe with --key value overrides",
        description="Train from a recipe (-c recipes/NAME.yaml); any recipe key can be overridden as "
                    "--key value (dashes or underscores); timm's spellings (-b, -j, --amp, --drop, --input-size, "
                    "--initial-checkpoint, --data-dir, --crop-pct, --no-model-ema) work too. --batch-size is the "
                    "GLOBAL batch: under torchrun each of N processes takes batch_size/N. --resume RUN_DIR (or its "
                    "last.pt) continues a run exactly.",
        epilog="`ghostnetv3 train -c RECIPE --help` shows that recipe's values as the defaults.")

    e = subparsers.add_parser("eval", help="top-1/top-5 of a run: raw, EMA and the fused (shipped) weights",
                              description="Score a run's raw and EMA weights and the fused model that "
                                          "`export` and `predict` use (same --weights/--checkpoint rule).")
    e.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    e.add_argument("--data", help="dataset name or path (default: the run's)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--val-subset", metavar="N|all",
                   help="score N images (seeded), or 'all' (also 0) for the whole validation split "
                        "(default: the run's own validation set)")
    e.add_argument("--device")
    add_threads_flag(e)
    add_weights_flags(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(func=_cmd_eval)

    pl = subparsers.add_parser("plot", help="PNG training curves of a run (loss, lr, top-1 raw vs EMA)")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    pl.add_argument("-o", "--out", help="PNG path (default: RUN_DIR/curves.png)")
    pl.set_defaults(func=_cmd_plot)


def _overrides(args: argparse.Namespace) -> dict:
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("key_")}
    return {k: (v if not isinstance(v, list) else v if len(v) > 1 else v[0]) for k, v in overrides.items()}


def resume_run(args: argparse.Namespace) -> Run | None:
    """The run `--resume` names (nothing read yet): one Run, so its last.pt is read once per command."""
    from .run import Run  # loads the data layer (timm): only a command that reads a run needs it

    resume = _overrides(args).get("resume")
    return Run(resume) if resume else None


def config_from_args(args: argparse.Namespace, run: Run | None = None) -> C.TrainConfig:
    """`run`: resume_run(args), when the caller reads the run too."""
    overrides = _overrides(args)
    if overrides.get("resume"):
        _check_resumable(overrides["resume"])
    if args.recipe is None and overrides.get("resume"):
        # no recipe: continue with the run's own config
        saved = (run or resume_run(args)).last.get(ckpt_io.CONFIG_KEY)
        if saved is None:
            raise ValueError(f"{overrides['resume']} holds no training config; pass the recipe with -c")
        base = C.from_checkpoint_dict(saved).to_dict()
        base.update({k: C.coerce(k, v) for k, v in overrides.items()})
        return C.TrainConfig(**base)
    return C.load_config(args.recipe, **overrides)


def _check_resumable(resume: str) -> None:
    """--resume takes a run directory or its last.pt (timm's habit: a checkpoint file); best.pt holds
    weights only, so point at what can continue. A live run that has not saved its first checkpoint yet
    is named as busy, not as killed."""
    p = Path(resume)
    if p.is_dir() and not (p / ckpt_io.LAST).is_file():
        who = rundir.lock_holder(p)
        if who:
            raise ValueError(f"{p} is in use by {who}: a training run is writing to it and has not saved its "
                             f"first checkpoint yet; wait for it to finish or stop it, then --resume {p}")
    if p.is_file() and p.name == ckpt_io.BEST:
        hint = (f"--resume {p.parent}" if (p.parent / ckpt_io.LAST).is_file()
                else f"--init-checkpoint {p} to start a new run from these weights")
        raise ValueError(f"{p} holds weights only (no optimizer state to continue from); use {hint}")


def finished_run(cfg: C.TrainConfig, run: Run | None = None) -> dict | None:
    """The last checkpoint of --resume when it already ends at --epochs (nothing left to train)."""
    if not cfg.resume:
        return None
    if run is None or run.path != Path(cfg.resume):  # a recipe's own `resume:`
        from .run import Run  # loads the data layer (timm): only a command that reads a run needs it
        run = Run(cfg.resume)
    state = run.last
    if state.get("model_name") != cfg.model:  # not this run's model: train() refuses it with the reason
        return None
    plan = state.get("plan") or {}
    epochs = cfg.epochs
    if cfg.time_limit and plan.get("calibrated"):  # a time-budget run ends where its plan ends
        epochs = -(-plan["total_steps"] // plan["steps_per_epoch"])
    if state.get("step", 0) == 0 and state.get("epoch", 0) >= epochs:
        return state
    return None


def _check_device(cfg: C.TrainConfig) -> None:
    """Errors the loop would only meet at its first step, after the run directory exists."""
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.amp == "fp16" and not str(device).startswith("cuda"):
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")


def format_summary(summary: dict, metric: str = "top1", label: str | None = None,
                   next_steps: str | None = None) -> str:
    """The few lines a person reads at the end of a run: the best score, where the files are, what next
    (`next_steps`: the commands to suggest, with RUN for the run directory)."""
    run = summary.get("run_dir", "RUN_DIR")
    best, epoch, src = summary.get(f"best_{metric}"), summary.get("best_epoch"), summary.get("best_source")
    lines = []
    name = label or metric
    if best is not None:
        label = {"ema": "EMA", "raw": "raw"}.get(src, src)
        elapsed = summary.get("elapsed_s")
        took = ""
        if isinstance(elapsed, (int, float)):
            took = f" in {elapsed / 60:.1f} min" if elapsed >= 60 else f" in {elapsed:.0f} s"
        lines.append(f"done: best {name} {best:.2f} at epoch {epoch} ({label} weights, fused){took}")
    files = [n for n in (ckpt_io.BEST, ckpt_io.LAST, ckpt_io.METRICS_FILE, ckpt_io.CONFIG_FILE)
             if (Path(run) / n).exists()]
    lines.append(f"files: {run}/ {{{', '.join(files)}}}")
    steps = next_steps or ("ghostnetv3 eval RUN  |  ghostnetv3 predict RUN IMAGE  |  ghostnetv3 export RUN -o "
                           "model.onnx  |  ghostnetv3 plot RUN")
    lines.append("next: " + steps.replace("RUN", str(run)))
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    from ghostnetv3.distill.task import train  # the classification task, with KD when the config names a teacher

    from .train import TrainingInterrupted

    resumed = resume_run(args)
    cfg = config_from_args(args, resumed)
    _check_device(cfg)
    done = finished_run(cfg, resumed)
    if done is not None:
        run = ckpt_io.find_checkpoint(cfg.resume).parent
        print(f"{run} is finished: it trained all {done['epoch']} of {cfg.epochs} epochs; nothing to train. "
              f"To train longer: ghostnetv3 train --resume {run} --epochs N (N > {done['epoch']})")
        return 0
    start_threads(args.threads)
    try:
        summary = train(cfg, resumed=resumed)
    except TrainingInterrupted as e:
        print(f"ghostnetv3 train: {e}", file=sys.stderr)
        return 128 + e.signum
    if summary:
        print(format_summary(summary, metric=summary.get("eval_metric", "top1")))
        print(json.dumps(summary))
    return 0


def start_threads(threads: int | None) -> int:
    """A training command's threads: set, and said on stdout with why (and the busy-machine note)."""
    notes: list[str] = []
    n = apply_threads(threads, log=notes.append, busy_note=True)
    if os.environ.get("RANK", "0") == "0":
        print(f"threads: {n} per process ({'--threads' if threads else default_threads_why()})", flush=True)
        for note in notes:
            print(note, flush=True)
    return n


def busy_machine_hint(threads: int) -> str | None:
    """A note when other jobs already keep the cores busy: OpenMP threads then spin-wait for each other.
    Measured on 2 shared cores at load 4.3 (benchmarks/threads_under_load.py, docs/benchmarks.md): 2 threads
    12 img/s, 2 threads with OMP_WAIT_POLICY=PASSIVE 62, 1 thread 123."""
    if threads < 2 or os.environ.get("OMP_WAIT_POLICY"):
        return None
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if load <= cores:
        return None
    return (f"note: load average {load:.1f} on {cores} cores: other jobs compete for them, and {threads} OpenMP "
            f"threads spin-waiting for each other can run several times slower than 1; consider --threads 1 "
            f"or OMP_WAIT_POLICY=PASSIVE")


def default_threads_why() -> str:
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return "from OMP_NUM_THREADS"
    return "the cores this process may use; --threads N to change"


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, format_report, parse_val_subset

    apply_threads(args.threads)
    r = evaluate_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size,
                            val_subset=parse_val_subset(args.val_subset), device=args.device,
                            weights=args.weights, checkpoint=args.run_checkpoint,
                            progress=not args.no_progress and not args.json)
    print(json.dumps(r) if args.json else format_report(r))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from ghostnetv3.paths import check_writable

    from .plot import plot_run

    # the destination first: a read-only folder is one line, not matplotlib's OSError at the end
    if args.out or Path(args.run_dir).is_dir():  # a missing run is plot_run's to report
        check_writable(args.out or Path(args.run_dir) / "curves.png", "-o")
    print(plot_run(args.run_dir, args.out))
    return 0
