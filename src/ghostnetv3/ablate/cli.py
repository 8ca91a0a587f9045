"""`ghostnetv3 ablate -c recipes/ablation_<dataset>.yaml [--seeds N] [--jobs N]`."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate", help="run a grid of training arms x seeds and write the ingredient table",
        description="Expand the plan's arms x seeds into ordinary `train` runs (same budget for every arm), "
                    "skip runs already finished, continue stopped ones, and write <results_dir>/ablation_<name>."
                    "{md,json,png} after every finished run. Safe to stop and run again.",
        allow_abbrev=False)
    p.add_argument("-c", "--config", dest="plan", required=True, metavar="PLAN", help="ablation plan (YAML)")
    p.add_argument("--seeds", type=int, help="seeds per arm (default: the plan's)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default: 1)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--arms", help="comma-separated arm names to run (default: all; the report covers all)")
    p.add_argument("--output", help="run directory root (default: the plan's output)")
    p.add_argument("--results-dir", help="where the report goes (default: the plan's results_dir)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from finished runs; train nothing")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done; train nothing")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from .plan import load_plan, run_name
    from .report import write_report
    from .runner import RESULT, Runner

    plan = load_plan(args.plan, seeds=args.seeds, output=args.output, results_dir=args.results_dir)
    arms = None
    if args.arms:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = [a for a in arms if a not in {x.name for x in plan.arms}]
        if unknown:
            raise ValueError(f"--arms: '{unknown[0]}' is not an arm of {args.plan}; "
                             f"arms: {', '.join(a.name for a in plan.arms)}")
    runner = Runner(plan, jobs=args.jobs, threads=args.threads, log=lambda m: print(m, flush=True))
    if args.dry_run:
        for arm, seed in runner.todo(arms):
            done = (plan.run_root / run_name(arm.name, seed) / RESULT).exists()
            print(f"{'done' if done else 'todo'}  {run_name(arm.name, seed)}")
        return 0
    report = lambda: write_report(plan, runner.results())  # noqa: E731
    failures = []
    if not args.report_only:
        runner.on_result = report
        failures = runner.run(arms)
    paths = report()
    print(f"report: {paths['md']} {paths['json']} {paths['png']}")
    if failures:
        print(f"ghostnetv3 ablate: {len(failures)} run(s) failed; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0
