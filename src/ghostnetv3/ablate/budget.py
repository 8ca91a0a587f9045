"""The budget chart: what each ingredient is worth as the training budget grows, from the recorded
grids (`<results_dir>/ablation_*.json`) alone — nothing is trained or re-scored.

Which difference measures which ingredient is data in the plans: a claim tagged `ingredient: KEY`
(plan.INGREDIENTS) is one point, at the optimizer steps per run its grid recorded; claims that share
an ingredient and a `variant` are one line. Written as <results_dir>/budget.{md,json,png} by
`ghostnetv3 ablate --budget-chart`, and after every report of a plan that tags its claims.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from . import charts
from .plan import INGREDIENTS

METRIC = "top1"
HOW_TO_READ = ("Each point: one claim of one recorded grid, arm minus its reference, paired by seed (same data "
               "subset and initialisation), mean over seeds with its 95% Student-t interval. An interval that "
               "holds 0 shows no difference. An interval beyond the axis is drawn to the edge and marked with "
               "its value. KD points name their grid's teacher and its top-1.")


def _grid(path: Path, s: dict[str, Any], tagged: list[dict[str, Any]]) -> dict[str, Any]:
    steps, steps_from = s.get("steps_per_run"), s.get("steps_from")
    if steps is None:  # the arms disagree or none is known: the tagged claims' own, if they agree
        steps = next(iter({c["steps"] for c in tagged})) if len({c["steps"] for c in tagged}) == 1 else None
        steps_from = next((c["steps_from"] for c in tagged if c["steps"] == steps), None)
    t = s.get("teacher") or {}
    return {"name": s["name"], "report": path.with_suffix(".md").name, "data": s.get("data"), "steps": steps,
            "steps_from": steps_from,
            "finished_runs": s.get("finished_runs"),
            "planned_runs": s.get("planned_runs"), "updated": s.get("updated"),
            "teacher": {"model": t.get("model"), "top1": t.get("top1"),
                        **({"student_view_top1": t["student_view_top1"]} if t.get("student_view_top1") is not None
                           else {})} if t.get("top1") is not None else None}


def _teacher(grid: dict[str, Any]) -> Optional[str]:
    t = grid["teacher"]
    if t is None:
        return None
    view = t.get("student_view_top1")
    return f"{t['model']} {t['top1']:.1f}%" + (f" ({view:.1f}% on the student's view)" if view is not None else "")


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not an ablation report ({e}); restore it from git or delete it") from None


def collect(results_dir: Path) -> dict[str, Any]:
    """The budget table: one row per tagged claim of every recorded grid, the grids with their steps
    and teachers, and the grids left out (with why)."""
    grids, rows, left_out = [], [], []
    for path in sorted(Path(results_dir).glob("ablation_*.json")):
        s = _read(path)
        tagged = [c for c in s.get("claims") or [] if c.get("ingredient")]
        if not tagged:
            continue
        if s.get("budget_overrides"):
            left_out.append(f"{path.name}: a quick look (its plan's budget overridden)")
            continue
        if METRIC not in s.get("metrics", []):
            left_out.append(f"{path.name}: no {METRIC} scores")
            continue
        grid = _grid(path, s, tagged)
        if grid["steps"] is None:
            left_out.append(f"{path.name}: steps per run unknown ({tagged[0].get('steps_from')}; a finished "
                            f"run records them)")
            continue
        for c in tagged:
            if c.get("steps") is None:
                left_out.append(f"{path.name}, {c['arm']} − {c['ref']}: steps per run unknown "
                                f"({c.get('steps_from')})")
                continue
            rows.append({"ingredient": c["ingredient"], "variant": c.get("variant") or "", "grid": s["name"],
                         "data": s.get("data"), "steps": c["steps"], "claim": c["claim"], "arm": c["arm"],
                         "ref": c["ref"], "diff": c[METRIC]["diff"], "verdict": c[METRIC]["verdict"],
                         "teacher": _teacher(grid) if c["ingredient"] == "kd" else None,
                         "teacher_top1": (grid["teacher"] or {}).get("top1") if c["ingredient"] == "kd" else None})
        grids.append(grid)
    datasets = sorted({g["data"] for g in grids if g["data"]})
    if len(datasets) > 1:  # one line per data set: a line never joins two data sets
        for r in rows:
            r["variant"] = ", ".join(v for v in (r["variant"], r["data"]) if v)
    order = list(INGREDIENTS)
    rows.sort(key=lambda r: (order.index(r["ingredient"]), r["variant"], r["steps"]))
    grids.sort(key=lambda g: (g["steps"] or 0, g["name"]))
    title = (f"What each ingredient is worth as the budget grows ({', '.join(datasets) or 'no grid yet'}): "
             f"Δ top-1 against optimizer steps per run, from {len(grids)} recorded grid(s)")
    return {"title": title, "how_to_read": HOW_TO_READ, "metric": METRIC, "ingredients": dict(INGREDIENTS),
            "grids": grids, "rows": rows, "left_out": left_out}


def _fmt_diff(d: dict[str, Any]) -> str:
    if d.get("mean") is None:
        return "not run yet"
    return f"{d['mean']:+.2f}" + (f" [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]" if d.get("ci") else " (1 seed)")


def to_markdown(b: dict[str, Any]) -> str:
    lines = ["# What each ingredient is worth at each budget", "",
             "Generated by `ghostnetv3 ablate --budget-chart` from the recorded grids in this folder (and rebuilt "
             "after every report of a plan whose claims carry an `ingredient:` tag); do not edit by hand. "
             "Chart: [budget.png](budget.png), data: [budget.json](budget.json).", "", b["how_to_read"],
             "Steps per run: the optimizer steps each grid's runs recorded, or for grids whose runs did not record "
             "them, their budget as the engine trains it (full batches only).", "",
             "## Grids", "", "| grid | data | optimizer steps per run | runs | teacher (KD rows) |",
             "|---|---|---|---|---|"]
    for g in b["grids"]:
        lines.append(f"| [{g['name']}]({g['report']}) | {g['data'] or '–'} | {g['steps']:,} ({g['steps_from']}) | "
                     f"{g['finished_runs']} of {g['planned_runs']} | {_teacher(g) or '–'} |")
    for key, label in b["ingredients"].items():
        rows = [r for r in b["rows"] if r["ingredient"] == key]
        lines += ["", f"## {label}", ""]
        if not rows:
            lines.append("Not measured yet: no recorded grid has a claim tagged `ingredient: " + key + "`.")
            continue
        lines += ["| steps | grid | variant | test | Δ top-1 [95% CI] | n | verdict | teacher |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['steps']:,} | {r['grid']} | {r['variant'] or '–'} | {r['arm']} − {r['ref']} | "
                         f"{_fmt_diff(r['diff'])} | {r['diff'].get('n', 0)} | {r['verdict']} | "
                         f"{r['teacher'] or '–'} |")
    if b["left_out"]:
        lines += ["", "## Left out", ""] + [f"- {x}" for x in b["left_out"]]
    return "\n".join(lines) + "\n"


def write_budget(results_dir: str | Path) -> dict[str, Path]:
    """Rebuild <results_dir>/budget.{md,json,png} from the recorded grids there."""
    out = Path(results_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"results directory not found: {out} (pass --results-dir DIR)")
    b = collect(out)
    if not b["grids"]:
        raise ValueError(f"no recorded grid in {out} tags its claims with `ingredient:` (one of "
                         f"{', '.join(INGREDIENTS)}); tag the claims in the plans and rewrite their reports with "
                         f"`ghostnetv3 ablate -c PLAN --report-only`")
    paths = {k: out / f"budget.{k}" for k in ("md", "json", "png")}
    for key, text in (("json", json.dumps(b, indent=1)), ("md", to_markdown(b))):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    charts.save(charts.budget_figure(b), paths["png"])
    return paths
