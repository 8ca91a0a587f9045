"""The ablation charts: what the pages argue, drawn so a reader cannot be misled by the drawing.

- The grid chart is a forest plot: one row per claim (arm − reference), the paired mean difference
  with its 95% interval, a line at 0, the verdict beside it. Nothing is drawn for a comparison
  without runs (no 0-height bars), and the axis always holds 0.
- The budget chart: for each ingredient, its difference at every budget on a log axis of
  optimizer steps.
- An outlier (the paper's EMA decay at −77 points) would squash every other interval into a
  sliver, so each axis spans the bulk of the intervals; whatever lies beyond is drawn up to the
  edge, marked with an arrow and its value.
"""
from __future__ import annotations

import os
import statistics
import textwrap
from pathlib import Path
from typing import Any, Optional

from ghostnetv3.errors import UserError

VERDICT_COLORS = {"reproduced": "tab:green", "not reproduced": "tab:red"}
# a value beyond 5x the median |interval endpoint| and beyond 30 points is clipped (and marked): an
# interval within ±30 points is always drawn whole, however few the rows
OUTLIER_FACTOR = 5.0
MIN_SPAN = 30.0


def _plt():
    try:
        import matplotlib  # lazy: the optional [plot] extra; only drawing needs it
    except ModuleNotFoundError:
        raise UserError("the ablation charts need matplotlib: pip install 'ghostnetv3[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above
    return plt


def _color(verdict: str) -> str:
    for key, color in VERDICT_COLORS.items():
        if verdict.startswith(key):
            return color
    return "tab:gray"


def span(diffs: list[Optional[dict[str, Any]]]) -> tuple[float, float]:
    """The axis range for these differences: 0 and every mean and interval endpoint up to the outlier
    cap, padded. A value beyond the cap is an outlier: left off the range, marked where it is drawn."""
    ends = [v for d in diffs if d and d.get("mean") is not None for v in (d.get("ci") or [d["mean"]] * 2)]
    if not ends:
        return -1.0, 1.0
    cap = max(OUTLIER_FACTOR * statistics.median(abs(v) for v in ends), MIN_SPAN)
    means = [d["mean"] for d in diffs if d and d.get("mean") is not None]
    kept = [v for v in ends + means if abs(v) <= cap] + [0.0]
    lo, hi = min(kept), max(kept)
    pad = 0.08 * max(hi - lo, 1.0)
    return lo - pad, hi + pad


def _fmt(d: Optional[dict[str, Any]]) -> str:
    if not d or d.get("mean") is None:
        return "not run yet"
    s = f"{d['mean']:+.2f}"
    if d.get("ci"):
        s += f" [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
    else:
        s += " (1 seed: no interval)"
    return s


def _mark(ax, at: tuple[float, float], text: str, side: int, horizontal: bool, color: str) -> None:
    """Text beside a clipped value, on the inner side of the edge it points to (side -1: the low edge)."""
    if horizontal:
        ax.annotate(text, at, textcoords="offset points", xytext=(-6 * side, 5), fontsize=7, color=color,
                    ha="right" if side > 0 else "left", va="bottom")
    else:
        ax.annotate(text, at, textcoords="offset points", xytext=(5, -6 * side), fontsize=7, color=color,
                    ha="left", va="top" if side > 0 else "bottom")


def draw_interval(ax, pos: float, d: dict[str, Any], lim: tuple[float, float], color: str,
                  horizontal: bool = True) -> None:
    """One difference at `pos` (a row, or an x position): its interval as a line, its mean as a dot,
    each clipped to `lim`; what lies beyond an edge ends in an arrow there, with its value."""
    lo, hi = lim
    m = d["mean"]
    ci_lo, ci_hi = d.get("ci") or (m, m)
    point = (lambda v: (v, pos)) if horizontal else (lambda v: (pos, v))
    a, b = max(ci_lo, lo), min(ci_hi, hi)
    if a <= b:
        ax.plot(*zip(point(a), point(b)), color=color, lw=2.2, solid_capstyle="butt")
    if not lo <= m <= hi:  # the mean itself is off the scale: an arrow at its edge, its numbers beside
        side = 1 if m > hi else -1
        edge = hi if side > 0 else lo
        ax.plot(*point(edge), marker=(">" if side > 0 else "<") if horizontal else ("^" if side > 0 else "v"),
                color=color, ms=9, clip_on=False)
        _mark(ax, point(edge), f"off scale: {_fmt(d)}", side, horizontal, color)
        return
    ax.plot(*point(m), marker="o", color=color, ms=6)
    for end, side in ((ci_lo, -1), (ci_hi, 1)):
        edge = hi if side > 0 else lo
        if end * side > edge * side:
            ax.plot(*point(edge), marker=(">" if side > 0 else "<") if horizontal else ("^" if side > 0 else "v"),
                    color=color, ms=7, clip_on=False)
            _mark(ax, point(edge), f"{end:+.1f}", side, horizontal, color)


def forest_rows(s: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """The rows of a grid's forest plot: its claims, or (a plan without claims) each arm against its
    reference."""
    if s.get("claims"):
        return [{"label": c["claim"], "test": f"{c['arm']} − {c['ref']}", "diff": c[metric]["diff"],
                 "verdict": c[metric]["verdict"], "expect": c["expect"], "margin": c.get("margin", 1.0)}
                for c in s["claims"]]
    return [{"label": a.get("desc") or a["name"], "test": f"{a['name']} − {a['ref']}",
             "diff": a[metric].get("diff_vs_ref"), "verdict": "", "expect": "higher", "margin": 1.0}
            for a in s["arms"] if a.get("ref")]


def _forest_panel(ax, rows: list[dict[str, Any]], metric_label: str, row_labels: bool = True) -> None:
    lim = span([r["diff"] for r in rows])
    ys = list(range(len(rows)))[::-1]  # the first claim on top
    ax.axvline(0.0, color="black", lw=0.9)
    for y, r in zip(ys, rows):
        d = r["diff"]
        if r["expect"] == "same":  # the equivalence margin the verdict is judged against
            ax.fill_betweenx([y - 0.35, y + 0.35], -r["margin"], r["margin"], color="tab:blue", alpha=0.12, lw=0)
        if d and d.get("mean") is not None:
            draw_interval(ax, y, d, lim, _color(r["verdict"]))
        else:  # nothing to draw: said, not drawn as a zero
            ax.text(0.5, y, "not run yet", transform=ax.get_yaxis_transform(), ha="center", va="center",
                    fontsize=8, color="tab:gray", style="italic")
    ax.set_xlim(*lim)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(ys)
    # the claims name the rows once, left of the first metric's panel
    ax.set_yticklabels([textwrap.fill(r["label"], 38) + f"\n({r['test']})" for r in rows] if row_labels
                       else [""] * len(rows), fontsize=7.5)
    ax.set_title(f"Δ {metric_label}", fontsize=9)
    ax.set_xlabel(f"Δ {metric_label}, arm − reference (points):\nmean over seeds, 95% interval", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    right = ax.twinx()  # the numbers beside each row, so a clipped interval is still readable
    right.set_ylim(ax.get_ylim())
    right.set_yticks(ys)
    right.set_yticklabels([_fmt(r["diff"]) + (f"\n{r['verdict']}" if r["verdict"] else "") for r in rows],
                          fontsize=7.5)
    for label, r in zip(right.get_yticklabels(), rows):
        label.set_color(_color(r["verdict"]) if r["diff"] and r["diff"].get("mean") is not None else "tab:gray")


def report_figure(s: dict[str, Any], labels: dict[str, str]):
    """The grid's forest plot, one panel per metric."""
    plt = _plt()
    metrics = s["metrics"]
    rows = forest_rows(s, metrics[0])
    width = 9.5 + 6.5 * (len(metrics) - 1)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width, 1.8 + 0.62 * max(len(rows), 1)),
                             squeeze=False, layout="constrained")
    for col, (ax, m) in enumerate(zip(axes[0], metrics)):
        _forest_panel(ax, forest_rows(s, m), labels[m], row_labels=col == 0)
    title = (f"ablation {s['name']}: each claim as a paired difference over seeds "
             f"({s['finished_runs']} of {s['planned_runs']} runs finished)")
    fig.suptitle(textwrap.fill(title, int(width * 10)), fontsize=10)
    return fig


def save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    os.replace(tmp, path)


def budget_figure(b: dict[str, Any]):
    """One panel per ingredient: Δ top-1 against optimizer steps per run (log axis), one line per
    variant, the 95% interval as a vertical bar; KD points name their teacher."""
    plt = _plt()
    ingredients = b["ingredients"]
    ncols = 3
    nrows = -(-len(ingredients) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False, layout="constrained")
    all_steps = sorted({g["steps"] for g in b["grids"]})
    for ax, (key, label) in zip(axes.flat, ingredients.items()):
        _budget_panel(ax, [r for r in b["rows"] if r["ingredient"] == key], label, all_steps)
    for ax in list(axes.flat)[len(ingredients):]:
        ax.axis("off")
        ax.text(0.0, 0.9, textwrap.fill(b["how_to_read"], 60), transform=ax.transAxes, va="top", fontsize=8)
    fig.suptitle(textwrap.fill(b["title"], 130), fontsize=11)
    return fig


def _budget_panel(ax, rows: list[dict[str, Any]], label: str, all_steps: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_title(label, fontsize=10)
    ax.set_xlabel("optimizer steps per run (log scale)")
    ax.set_ylabel("Δ top-1 (points), 95% interval")
    if all_steps:
        ax.set_xlim(all_steps[0] / 1.6, all_steps[-1] * 1.6)
        ax.set_xticks(all_steps)
        ax.set_xticklabels([f"{s:,}" for s in all_steps], fontsize=8)
        ax.minorticks_off()
    measured = [r for r in rows if r["diff"].get("mean") is not None]
    if not measured:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "not measured yet", transform=ax.transAxes, ha="center", va="center", color="tab:gray",
                style="italic")
        return
    ax.axhline(0.0, color="black", lw=0.9)
    lim = span([r["diff"] for r in measured])
    variants = list(dict.fromkeys(r["variant"] for r in measured))
    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    for i, variant in enumerate(variants):
        color = colors[i % len(colors)]
        dodge = 1.0 + 0.08 * (i - (len(variants) - 1) / 2)  # variants at one budget side by side
        pts = sorted((r for r in measured if r["variant"] == variant), key=lambda r: r["steps"])
        on_scale = [(r["steps"] * dodge, r["diff"]["mean"]) for r in pts if lim[0] <= r["diff"]["mean"] <= lim[1]]
        if len(on_scale) > 1:
            ax.plot(*zip(*on_scale), color=color, lw=1, alpha=0.6)
        for r in pts:
            draw_interval(ax, r["steps"] * dodge, r["diff"], lim, color, horizontal=False)
            m = r["diff"]["mean"]
            if lim[0] <= m <= lim[1]:  # the value beside its dot: small differences stay readable
                text = f"{m:+.2f}" + (f"\nteacher {r['teacher_top1']:.1f}%" if r.get("teacher_top1") else "")
                ax.annotate(text, (r["steps"] * dodge, m), textcoords="offset points", xytext=(6, 0), fontsize=7,
                            color=color, va="center")
        ax.plot([], [], color=color, marker="o", label=variant or "as in the plans")
    ax.set_ylim(*lim)
    ax.grid(alpha=0.3)
    if len(variants) > 1 or variants[0]:
        ax.legend(fontsize=7, loc="best")
