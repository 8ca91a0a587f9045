"""The ablation report: mean ± std per arm, the paired difference to the reference arm with a 95%
confidence interval (Student t over seeds: arm and reference share each seed's data subset and
initialisation seed), a forest plot of the claims; written as Markdown, JSON and PNG."""
from __future__ import annotations

import collections
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch

from . import charts
from .plan import Arm, Plan

# two-sided 95% Student t quantiles t(0.975, df), df = 1..30 (standard table values)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
LABELS = {"top1": "top-1", "macro_f1": "macro-F1", "balanced_acc": "balanced acc."}
# the teacher's top-1 through the students' eval view (cache-teacher records it; older reports lack it)
TEACHER_VIEW_KEYS = ("student_view_top1", "student_img_size", "teacher_input_size")


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_std(xs: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def paired_diff(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Mean of a[s] - b[s] over the seeds both have, with a 95% t interval (None below 2 pairs)."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    if not d:
        return {"n": 0, "mean": None, "ci": None}
    m = statistics.fmean(d)
    if len(d) < 2:
        return {"n": 1, "mean": m, "ci": None}
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return {"n": len(d), "mean": m, "ci": [m - half, m + half]}


def verdict(diff: dict[str, Any], expect: str, margin: float = 1.0) -> str:
    """reproduced: the 95% interval lies on the expected side of 0 (for `same`: inside ±margin, an
    equivalence test); not reproduced: it lies on the other side (for `same`: it excludes 0); else
    inconclusive."""
    if not diff or diff.get("ci") is None:
        return "inconclusive (fewer than 2 seeds)"
    lo, hi = diff["ci"]
    if expect == "same":
        if -margin <= lo and hi <= margin:
            return f"reproduced (within ±{margin:g})"
        if lo > 0 or hi < 0:
            return "not reproduced (they differ)"
        return f"inconclusive (interval wider than ±{margin:g})"
    if lo > 0:
        return "reproduced" if expect == "higher" else "not reproduced (the opposite)"
    if hi < 0:
        return "reproduced" if expect == "lower" else "not reproduced (the opposite)"
    return "inconclusive (interval contains 0)"


RECORDED = "recorded by the runs"


def steps_per_run(plan: Plan, arm: Arm, runs: list[dict[str, Any]]) -> tuple[Optional[int], str]:
    """Optimizer steps per run of an arm, and where the number comes from: the global step its runs
    recorded (the most common among those that did not diverge), else its budget as the engine trains
    it (drop_last: train_subset // batch_size full batches per epoch); (None, why) when neither says."""
    recorded = [r["global_step"] for r in runs if r.get("global_step") and not r.get("diverged")]
    if recorded:
        return collections.Counter(recorded).most_common(1)[0][0], RECORDED
    cfg = plan.config(arm, 0)
    if cfg.train_subset and cfg.batch_size and cfg.epochs:
        return (cfg.train_subset // cfg.batch_size) * cfg.epochs, \
            f"the budget: {cfg.train_subset} images // batch {cfg.batch_size} × {cfg.epochs} epochs"
    return None, "not recorded by the runs, and the budget does not fix the number of training images"


def grid_steps(steps: dict[str, tuple[Optional[int], str]]) -> tuple[Optional[int], str]:
    """The grid's steps per run: the one number its arms agree on (arms not yet known left out);
    None when they disagree or none is known."""
    known = {v for v in steps.values() if v[0] is not None}
    if len({n for n, _ in known}) != 1:
        return None, "the arms differ" if known else "unknown"
    return min(known, key=lambda v: v[1] != RECORDED)  # what a run recorded before what its budget says


def _claims(plan: Plan, by_arm: dict[str, list[dict]], steps: dict[str, tuple]) -> list[dict[str, Any]]:
    claims = []
    grid = grid_steps(steps)
    for c in plan.claims:
        # the arm's own, else its reference's (the pair shares a budget), else the grid's
        n, why = next((v for v in (steps[c.arm], steps[c.ref], grid) if v[0] is not None), steps[c.arm])
        entry = {"claim": c.claim, "arm": c.arm, "ref": c.ref, "expect": c.expect, "margin": c.margin,
                 "ingredient": c.ingredient, "variant": c.variant, "steps": n, "steps_from": why}
        for m in plan.metrics:
            d = paired_diff({r["seed"]: r[m] for r in by_arm.get(c.arm, [])},
                            {r["seed"]: r[m] for r in by_arm.get(c.ref, [])})
            entry[m] = {"diff": d, "verdict": verdict(d, c.expect, c.margin)}
        claims.append(entry)
    return claims


def summarize(plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    arms_out = []
    by_arm = results["arms"]
    steps: dict[str, tuple[Optional[int], str]] = {}
    for arm in plan.arms:
        runs = sorted(by_arm.get(arm.name, []), key=lambda r: r["seed"])
        entry: dict[str, Any] = {"name": arm.name, "desc": arm.desc, "ref": arm.ref, "kd": arm.kd,
                                 "set": arm.set, "n": len(runs), "runs": runs}
        for m in plan.metrics:
            entry[m] = dict(zip(("mean", "std"), mean_std([r[m] for r in runs])))
            if arm.ref is not None:
                ref_runs = by_arm.get(arm.ref, [])
                entry[m]["diff_vs_ref"] = paired_diff({r["seed"]: r[m] for r in runs},
                                                      {r["seed"]: r[m] for r in ref_runs})
        walls = [r["wall_s"] for r in runs if r.get("wall_s")]
        entry["wall_s_mean"] = statistics.fmean(walls) if walls else None
        entry["steps"], entry["steps_from"] = steps[arm.name] = steps_per_run(plan, arm, runs)
        arms_out.append(entry)
    claims = _claims(plan, by_arm, steps)
    all_walls = [r.get("harness_wall_s") or 0.0 for runs in by_arm.values() for r in runs]
    ema_vs_raw = []
    for arm in plan.arms:
        pairs = [r for r in by_arm.get(arm.name, []) if r.get("ema_top1") is not None and r.get("raw_top1") is not None]
        if pairs:
            d = paired_diff({r["seed"]: r["ema_top1"] for r in pairs}, {r["seed"]: r["raw_top1"] for r in pairs})
            ema_vs_raw.append({"arm": arm.name, "diff": d, "verdict": ema_verdict(d)})
    teacher = results.get("teacher")
    return {"name": plan.name, "plan": plan.source, "description": plan.description, "recipe": plan.recipe,
            "data": plan.config(plan.arms[0], 0).data, "budget": plan.common,
            "budget_overrides": plan.overrides, "steps_per_run": grid_steps(steps)[0],
            "steps_from": grid_steps(steps)[1],
            "seeds": plan.seeds, "metrics": list(plan.metrics),
            "teacher": None if teacher is None else {
                **{k: teacher.get(k) for k in ("model", "top1", "macro_f1", "balanced_acc", "wall_s")},
                **{k: teacher[k] for k in TEACHER_VIEW_KEYS if teacher.get(k) is not None}},
            "finished_runs": sum(len(v) for v in by_arm.values()),
            "planned_runs": plan.seeds * len(plan.arms), "total_train_wall_s": sum(all_walls),
            "machine": results.get("machine") or f"{platform.machine()} {os.cpu_count()}-core CPU, "
                                                  f"{platform.system()}, torch {_torch_version()}",
            "updated": results.get("updated") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "runs_under_an_earlier_config": results.get("earlier_config") or [],
            "arms": arms_out, "claims": claims, "ema_vs_raw": ema_vs_raw}


def ema_verdict(diff: dict[str, Any]) -> str:
    """EMA top-1 minus the same run's raw top-1 over seeds: which one the 95% interval favours."""
    if diff.get("ci") is None:
        return "fewer than 2 seeds"
    lo, hi = diff["ci"]
    if hi < 0:
        return "EMA below raw"
    if lo > 0:
        return "EMA above raw"
    return "no difference shown (interval contains 0)"


def _torch_version() -> str:
    return torch.__version__


def _fmt(ms: dict[str, Any]) -> str:
    if ms.get("mean") is None:
        return "–"
    return f"{ms['mean']:.2f}" + (f" ± {ms['std']:.2f}" if ms.get("std") is not None else "")


def _fmt_diff(d: Optional[dict[str, Any]]) -> str:
    if not d or d.get("mean") is None:
        return "–"
    s = f"{d['mean']:+.2f}"
    if d.get("ci"):
        lo, hi = d["ci"]
        s += f" [{lo:+.2f}, {hi:+.2f}]"
    return s


def _header(s: dict[str, Any]) -> list[str]:
    """The report's opening: what was run, on what budget, where, and what is scored."""
    lines = [f"# Ablation: {s['name']}", ""]
    if s.get("budget_overrides"):  # the plan's description states the plan's budget, not this one
        over = ", ".join(f"{k}={v}" for k, v in s["budget_overrides"].items())
        lines += [f"A quick look: the arms of `{s['plan']}` with its budget overridden ({over}). The plan's "
                  f"description, which states its own budget, does not apply to these runs.", ""]
    elif s["description"]:
        lines += [s["description"], ""]
    budget = ", ".join(f"{k}={v}" for k, v in s["budget"].items())
    steps = s.get("steps_per_run")
    step_from = s.get("steps_from", "")
    lines += [f"- plan: `{s['plan']}` on recipe `{s['recipe']}`; budget, the same for every arm: {budget}"
              + (f"; {steps:,} optimizer steps per run ({step_from})" if steps else ""),
              f"- runs finished: {s['finished_runs']} of {s['planned_runs']} ({s['seeds']} seeds per arm); "
              f"wall time summed over the finished runs (training + scoring) {s['total_train_wall_s'] / 60:.1f} min",
              f"- machine: {s['machine']}; updated {s['updated']}",
              "- score: the model each run ends with (final epoch, no checkpoint selection), fused; the EMA "
              "weights where the arm uses EMA. Validation set as in the recipe.",
              "- Δ: paired difference to the reference arm over seeds (same data subset and seed), "
              "with a 95% Student-t interval; an interval that contains 0 means no difference was shown."]
    if s.get("runs_under_an_earlier_config"):
        n = len(s["runs_under_an_earlier_config"])
        lines.append(f"- {n} of these runs are shown as the report recorded them: their config hash differs from "
                     f"the one this plan now gives (a default or a recipe changed since), so `ghostnetv3 ablate` "
                     f"without --report-only would train them again")
    if s.get("teacher"):
        t = s["teacher"]
        lines.append(f"- teacher (KD arms): {t['model']}, top-1 {t['top1']:.2f}"
                     + (f", balanced acc. {t['balanced_acc']:.2f}" if t.get("balanced_acc") is not None else "")
                     + (f"; through the students' eval view ({t['student_img_size']} px resized to its "
                        f"{t['teacher_input_size']}), which is what the cache holds: top-1 "
                        f"{t['student_view_top1']:.2f}" if t.get("student_view_top1") is not None else ""))
    return lines


def to_markdown(s: dict[str, Any]) -> str:
    metrics = s["metrics"]
    lines = _header(s)
    lines += ["", "| arm | what changes | ref | n | " + " | ".join(LABELS[m] for m in metrics) + " | "
              + " | ".join(f"Δ {LABELS[m]} vs ref [95% CI]" for m in metrics) + " | train s/run |",
              "|" + "---|" * (5 + 2 * len(metrics))]
    for a in s["arms"]:
        wall = f"{a['wall_s_mean']:.0f}" if a.get("wall_s_mean") else "–"
        n_div = sum(1 for r in a["runs"] if r.get("diverged"))
        n = f"{a['n']} ({n_div} diverged)" if n_div else str(a["n"])
        lines.append(f"| {a['name']} | {a['desc']} | {a['ref'] or '–'} | {n} | "
                     + " | ".join(_fmt(a[m]) for m in metrics) + " | "
                     + " | ".join(_fmt_diff(a[m].get("diff_vs_ref")) for m in metrics) + f" | {wall} |")
    if s.get("claims"):
        lines += ["", "## The paper's claims on this data", "",
                  "| claim | test | " + " | ".join(f"Δ {LABELS[m]} [95% CI] → verdict" for m in metrics) + " |",
                  "|" + "---|" * (2 + len(metrics))]
        for c in s["claims"]:
            want = {"higher": "> 0", "lower": "< 0", "same": "= 0"}[c["expect"]]
            lines.append(f"| {c['claim']} | {c['arm']} − {c['ref']} {want} | "
                         + " | ".join(f"{_fmt_diff(c[m]['diff'])} → {c[m]['verdict']}" for m in metrics) + " |")
    if s.get("ema_vs_raw"):
        lines += ["", "## EMA weights vs the same run's raw weights (top-1, fused)", "",
                  "Each EMA run scored twice at its last step: its EMA weights (what the arm is scored on) and its "
                  "raw weights; Δ = EMA − raw, paired by run, 95% t interval.", "",
                  "| arm | n | Δ top-1 EMA − raw [95% CI] | verdict | per seed |", "|---|---|---|---|---|"]
        for e in s["ema_vs_raw"]:
            runs = next(a["runs"] for a in s["arms"] if a["name"] == e["arm"])
            per = ", ".join(f"s{r['seed']}: {r['ema_top1'] - r['raw_top1']:+.2f}" for r in runs
                            if r.get("ema_top1") is not None and r.get("raw_top1") is not None)
            lines.append(f"| {e['arm']} | {e['diff']['n']} | {_fmt_diff(e['diff'])} | {e['verdict']} | {per} |")
    lines += ["", "Per-run scores (seed: " + LABELS[metrics[0]] + "):", ""]
    for a in s["arms"]:
        runs = ", ".join(f"s{r['seed']}: {r[metrics[0]]:.2f}" + (" (diverged)" if r.get("diverged") else "")
                         for r in a["runs"]) or "–"
        lines.append(f"- {a['name']}: {runs}")
    diverged = [(a["name"], r) for a in s["arms"] for r in a["runs"] if r.get("diverged")]
    if diverged:
        lines += ["", "Diverged runs (the loss became NaN/inf; each is scored at its last good checkpoint, "
                  "which is what a user of that config is left with, and counts in the statistics above):", ""]
        for name, r in diverged:
            d = r["diverged"]
            lines.append(f"- {name} s{r['seed']}: loss {d['loss']} at epoch {d['epoch']} step {d['step']} "
                         f"(global step {d['global_step']}); its last good checkpoint (global step {r.get('global_step', '?')}): "
                         f"{LABELS[metrics[0]]} {r[metrics[0]]:.2f}")
    return "\n".join(lines) + "\n"


def figure(s: dict[str, Any]):
    """The report's chart: each claim's paired difference with its 95% interval (a forest plot)."""
    return charts.report_figure(s, LABELS)


def write_report(plan: Plan, results: dict[str, Any]) -> dict[str, Path]:
    s = summarize(plan, results)
    out = Path(plan.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"ablation_{plan.name}"
    paths = {"json": base.with_suffix(".json"), "md": base.with_suffix(".md"), "png": base.with_suffix(".png")}
    for key, text in (("json", json.dumps(s, indent=1)), ("md", to_markdown(s))):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    charts.save(figure(s), paths["png"])
    return paths
