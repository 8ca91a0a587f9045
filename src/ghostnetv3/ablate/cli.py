"""`ghostnetv3 ablate -c recipes/ablation_<dataset>.yaml [--seeds N] [--jobs N]`;
`ghostnetv3 ablate -c PLAN --report-only` (rewrite the report from the recorded results);
`ghostnetv3 ablate --budget-chart` (docs/results/budget.{md,json,png} from the recorded grids)."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate", help="run a grid of training arms x seeds and write the ingredient table",
        description="Expand the plan's arms x seeds into ordinary `train` runs (same budget for every arm), "
                    "skip runs already finished, continue stopped ones, and write <results_dir>/ablation_<name>."
                    "{md,json,png} after every finished run. Safe to stop and run again. Two processes may "
                    "share a plan: each run is claimed by one of them (a run claimed by another live process "
                    "is skipped and left to it).",
        allow_abbrev=False)
    p.add_argument("-c", "--config", dest="plan", metavar="PLAN", help="ablation plan (YAML)")
    p.add_argument("--seeds", type=int, help="seeds per arm (default: the plan's)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default: 1)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--arms", help="comma-separated arm names to run, plus the reference arms their comparisons "
                                  "need (default: all; the report covers all)")
    p.add_argument("--no-refs", action="store_true",
                   help="with --arms: run only the arms named, and list the references still missing")
    b = p.add_argument_group("budget overrides (a quick look; runs and report get their own name)")
    for flag, key in (("--epochs", "epochs"), ("--train-subset", "train_subset"), ("--val-subset", "val_subset"),
                      ("--batch-size", "batch_size"), ("--img-size", "img_size")):
        b.add_argument(flag, dest=f"budget_{key}", type=int, metavar="N", help=f"{key} of every arm")
    b.add_argument("--set", dest="budget_set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other recipe key for every arm (repeatable)")
    p.add_argument("--output", help="run directory root (default: the plan's output)")
    p.add_argument("--results-dir", help="where the report goes (default: the plan's results_dir)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report (and chart) from the finished runs and the runs the report records; "
                        "train nothing")
    p.add_argument("--budget-chart", dest="chart_budgets", action="store_true",
                   help="write <results-dir>/budget.{md,json,png} (each ingredient's difference at every recorded "
                        "budget) from the recorded reports there; train nothing; -c is not needed")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done; train nothing")
    p.set_defaults(func=_cmd)


def _budget(args: argparse.Namespace) -> dict:
    out = {k[len("budget_"):]: v for k, v in vars(args).items()
           if k.startswith("budget_") and k != "budget_set" and v is not None}
    for item in args.budget_set:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _budget_chart(args: argparse.Namespace) -> int:
    from .budget import write_budget

    paths = write_budget(args.results_dir or "docs/results")
    print(f"budget chart: {paths['md']} {paths['json']} {paths['png']}")
    return 0


def _cmd(args: argparse.Namespace) -> int:
    from .plan import load_plan, run_name, with_budget, with_references
    from .runner import Runner

    if args.plan is None:
        if args.chart_budgets:
            return _budget_chart(args)
        raise ValueError("pass the plan: -c recipes/ablation_NAME.yaml (or --budget-chart alone)")
    plan = load_plan(args.plan, seeds=args.seeds, output=args.output, results_dir=args.results_dir)
    base_name = plan.name
    plan = with_budget(plan, _budget(args))
    if plan.name != base_name:
        print(f"budget overrides: runs in {plan.run_root}, report ablation_{plan.name}.*", flush=True)
    runner = Runner(plan, jobs=args.jobs, threads=args.threads, log=lambda m: print(m, flush=True))
    runner.restore_recorded()
    arms = None
    if args.arms:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = [a for a in arms if a not in {x.name for x in plan.arms}]
        if unknown:
            raise ValueError(f"--arms: '{unknown[0]}' is not an arm of {args.plan}; "
                             f"arms: {', '.join(a.name for a in plan.arms)}")
        needed = with_references(plan, arms)
        extra = [a for a in needed if a not in arms]
        if extra and not args.no_refs:
            print(f"--arms: also running the reference arm(s) their comparisons need: {', '.join(extra)}", flush=True)
            arms = needed
        elif extra:
            missing = [a for a in extra
                       if not all(runner.done(plan.arm(a), s) for s in range(plan.seeds))]
            if missing:
                print(f"--no-refs: reference arm(s) without finished runs: {', '.join(missing)}; the claims "
                      f"comparing to them stay inconclusive", flush=True)
    if args.dry_run:
        for arm, seed in runner.todo(arms):
            print(f"{'done' if runner.done(arm, seed) else 'todo'}  {run_name(arm.name, seed)}")
        return 0
    failures = []
    if not args.report_only:
        runner.on_result = runner.write_report
        failures = runner.run(arms)
    paths = runner.write_report(recorded=args.report_only)
    print(f"report: {paths['md']} {paths['json']} {paths['png']}")
    if "budget" in paths:
        print(f"budget chart: {paths['budget']} (and .json, .png)")
    if args.chart_budgets and "budget" not in paths:
        _budget_chart(argparse.Namespace(results_dir=plan.results_dir))
    if runner.skipped:
        print(f"[ablate] {len(runner.skipped)} run(s) left to another live process on this plan: "
              f"{', '.join(runner.skipped)}; its report will include them when they finish", flush=True)
    if failures:
        print(f"ghostnetv3 ablate: {len(failures)} run(s) failed; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0
