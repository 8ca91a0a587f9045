"""The ablation report: mean ± std per arm, the paired difference to the reference arm with a 95%
confidence interval (Student t over seeds: arm and reference share each seed's data subset and
initialisation seed), a bar plot with error bars; written as Markdown, JSON and PNG."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from .plan import Plan

# two-sided 95% Student t quantiles t(0.975, df), df = 1..30 (standard table values)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
LABELS = {"top1": "top-1", "macro_f1": "macro-F1", "balanced_acc": "balanced acc."}


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


def summarize(plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    arms_out = []
    by_arm = results["arms"]
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
        arms_out.append(entry)
    claims = []
    for c in plan.claims:
        entry = {"claim": c.claim, "arm": c.arm, "ref": c.ref, "expect": c.expect, "margin": c.margin}
        for m in plan.metrics:
            d = paired_diff({r["seed"]: r[m] for r in by_arm.get(c.arm, [])},
                            {r["seed"]: r[m] for r in by_arm.get(c.ref, [])})
            entry[m] = {"diff": d, "verdict": verdict(d, c.expect, c.margin)}
        claims.append(entry)
    all_walls = [r.get("harness_wall_s") or 0.0 for runs in by_arm.values() for r in runs]
    ema_vs_raw = []
    for arm in plan.arms:
        pairs = [r for r in by_arm.get(arm.name, []) if r.get("ema_top1") is not None and r.get("raw_top1") is not None]
        if pairs:
            d = paired_diff({r["seed"]: r["ema_top1"] for r in pairs}, {r["seed"]: r["raw_top1"] for r in pairs})
            ema_vs_raw.append({"arm": arm.name, "diff": d, "verdict": ema_verdict(d)})
    teacher = results.get("teacher")
    return {"name": plan.name, "plan": plan.source, "description": plan.description, "recipe": plan.recipe,
            "budget": plan.common, "seeds": plan.seeds, "metrics": list(plan.metrics),
            "teacher": None if teacher is None else {k: teacher.get(k) for k in ("model", "top1", "macro_f1",
                                                                                 "balanced_acc", "wall_s")},
            "finished_runs": sum(len(v) for v in by_arm.values()),
            "planned_runs": plan.seeds * len(plan.arms), "total_train_wall_s": sum(all_walls),
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.system()}, "
                       f"torch {_torch_version()}", "updated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
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
    try:
        import torch
        return torch.__version__
    except Exception:  # pragma: no cover
        return "?"


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


def to_markdown(s: dict[str, Any]) -> str:
    metrics = s["metrics"]
    lines = [f"# Ablation: {s['name']}", ""]
    if s["description"]:
        lines += [s["description"], ""]
    budget = ", ".join(f"{k}={v}" for k, v in s["budget"].items())
    lines += [f"- plan: `{s['plan']}` on recipe `{s['recipe']}`; budget, the same for every arm: {budget}",
              f"- runs finished: {s['finished_runs']} of {s['planned_runs']} ({s['seeds']} seeds per arm); "
              f"wall time summed over the finished runs (training + scoring) {s['total_train_wall_s'] / 60:.1f} min",
              f"- machine: {s['machine']}; updated {s['updated']}",
              "- score: the model each run ends with (final epoch, no checkpoint selection), fused; the EMA "
              "weights where the arm uses EMA. Validation set as in the recipe.",
              "- Δ: paired difference to the reference arm over seeds (same data subset and seed), "
              "with a 95% Student-t interval; an interval that contains 0 means no difference was shown."]
    if s.get("teacher"):
        t = s["teacher"]
        lines.append(f"- teacher (KD arms): {t['model']}, top-1 {t['top1']:.2f}"
                     + (f", balanced acc. {t['balanced_acc']:.2f}" if t.get("balanced_acc") is not None else ""))
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


def plot(s: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(s)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def figure(s: dict[str, Any]):
    """Top row: each arm's mean ± std on an axis from 0 (a truncated axis makes small gaps look large).
    Bottom row: each arm's paired difference to its reference, with the 95% interval as error bars
    around 0 — the quantity the claims are judged on."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = s["metrics"]
    arms = s["arms"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(max(6, 0.55 * len(arms)) * len(metrics) / 1.3, 8.5),
                             squeeze=False)
    names = [a["name"] for a in arms]
    for col, m in enumerate(metrics):
        ax = axes[0][col]
        means = [a[m]["mean"] if a[m]["mean"] is not None else 0.0 for a in arms]
        stds = [a[m]["std"] or 0.0 for a in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_ylim(0.0, 100.0)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(f"{LABELS[m]} (%), mean ± std over seeds")
        ax.grid(axis="y", alpha=0.3)

        ax = axes[1][col]
        xs, ds, err = [], [], [[], []]
        for i, a in enumerate(arms):
            d = (a[m].get("diff_vs_ref") or {})
            if d.get("mean") is None:
                continue
            xs.append(i)
            ds.append(d["mean"])
            lo, hi = d["ci"] if d.get("ci") else (d["mean"], d["mean"])
            err[0].append(d["mean"] - lo)
            err[1].append(hi - d["mean"])
        ax.axhline(0.0, color="black", lw=0.8)
        if xs:
            ax.errorbar(xs, ds, yerr=err, fmt="o", capsize=4, color="tab:red")
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([f"{a['name']} - {a['ref']}" if a.get("ref") else a["name"] for a in arms],
                           rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"{LABELS[m]}: arm - reference (points), 95% CI")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"ablation: {s['name']} ({s['finished_runs']}/{s['planned_runs']} runs)")
    fig.tight_layout()
    return fig


def write_report(plan: Plan, results: dict[str, Any]) -> dict[str, Path]:
    s = summarize(plan, results)
    out = Path(plan.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"ablation_{plan.name}"
    paths = {"json": base.with_suffix(".json"), "md": base.with_suffix(".md"), "png": base.with_suffix(".png")}
    for key, text in (("json", json.dumps(s, indent=1)), ("md", to_markdown(s))):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    plot(s, paths["png"])
    return paths
