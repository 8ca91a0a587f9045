"""An ablation plan: a base recipe, one budget for every arm, a grid of named arms, an optional teacher.

    name: fashion_mnist                 # results: <results_dir>/ablation_<name>.{md,json,png}
    recipe: recipes/fashion_mnist.yaml  # the base recipe of every arm
    common: {epochs: 3, train_subset: 3000}   # the budget: the same for every arm
    seeds: 3
    metrics: [top1, macro_f1, balanced_acc]
    teacher:                            # optional, trained once (seed 0) before the arms that distill
      export: efficientnet_lite0        #   offline ImageNet weights to start from (export-teacher)
      set: {model: tf_efficientnet_lite0, ...}
      input_size: 64                    #   the teacher sees the student's views resized to this
      views: 3                          #   cached views per image (kd: cached)
    arms:
      - {name: plain, desc: "...", set: {num_conv_branches: 1, ...}}
      - {name: rep3, ref: plain, set: {...}, kd: online | cached}
    claims:                             # the paper's statements, each a paired difference arm - ref
      - {claim: "re-param helps", arm: rep3, ref: plain, expect: higher,
         ingredient: re-param, variant: "gamma = 1"}   # optional: a point of the budget chart

Every arm x seed is an ordinary `ghostnetv3 train` run of `recipe` + `common` + the arm's `set`.
A relative `recipe` is looked up beside the plan file first, then in the working directory, then
among the shipped recipes. A claim's `ingredient` (one of INGREDIENTS) puts its difference on the
budget chart (`ghostnetv3 ablate --budget-chart`), one line per ingredient and `variant`; neither
key enters a run's config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import yaml

from ghostnetv3.engine.config import TrainConfig, check_keys, find_recipe, load_config, normalize_key

METRICS = ("top1", "macro_f1", "balanced_acc")
# the ingredients of the budget chart, in its order: tag -> what a reader sees
INGREDIENTS = {"no-mixup-cutmix": "no Mixup/CutMix (paper recipe)", "re-param": "re-parameterization branches",
               "ema": "EMA", "kd": "KD (distillation)", "linear-branches": "linear branches (re-param)"}
_PLAN_KEYS = {"name", "recipe", "common", "seeds", "metrics", "teacher", "arms", "output", "results_dir",
              "description", "claims"}
_CLAIM_KEYS = {"claim", "arm", "ref", "expect", "margin", "ingredient", "variant"}
_ARM_KEYS = {"name", "desc", "ref", "set", "kd"}
_TEACHER_KEYS = {"export", "recipe", "set", "input_size", "views", "shared"}


@dataclasses.dataclass
class Arm:
    name: str
    set: dict[str, Any]
    ref: Optional[str] = None
    desc: str = ""
    kd: Optional[str] = None  # None | online | cached


@dataclasses.dataclass
class Claim:
    """A statement of the paper tested as a paired difference: `arm` minus `ref` is expected to be
    higher than 0, lower, or the same (no difference)."""
    claim: str
    arm: str
    ref: str
    expect: str = "higher"
    margin: float = 1.0  # expect: same — the interval must lie within ±margin (metric points)
    ingredient: Optional[str] = None  # a key of INGREDIENTS: this difference is a point of the budget chart
    variant: str = ""  # tells apart two measures of one ingredient (e.g. the branches' init)


@dataclasses.dataclass
class Plan:
    name: str
    recipe: Optional[str]
    common: dict[str, Any]
    arms: list[Arm]
    seeds: int = 3
    metrics: tuple[str, ...] = ("top1",)
    teacher: Optional[dict[str, Any]] = None
    output: str = "runs/ablation"
    results_dir: str = "docs/results"
    description: str = ""
    source: str = ""
    claims: list[Claim] = dataclasses.field(default_factory=list)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # a quick look's budget overrides

    @property
    def run_root(self) -> Path:
        return Path(self.output) / self.name

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def config(self, arm: Arm, seed: int, **extra: Any) -> TrainConfig:
        """The resolved TrainConfig of one arm x seed (KD paths are filled in by the runner via `extra`)."""
        values = {**self.common, **arm.set, **extra, "seed": seed, "output": str(self.run_root),
                  "experiment": run_name(arm.name, seed)}
        cfg = load_config(self.recipe, **values)
        # load_config skips None overrides; here `key: null` means "unset the recipe's value"
        # (e.g. GhostNet-only knobs for a MobileNetV2 arm)
        unset = {k: None for k, v in values.items() if v is None}
        return cfg.replace(**unset) if unset else cfg


def with_references(plan: Plan, arms: list[str]) -> list[str]:
    """`arms` plus the arms their comparisons need — each selected arm's `ref` and the reference of each
    claim about a selected arm (not the references' own references) — in plan order."""
    need = set(arms)
    need |= {a.ref for a in plan.arms if a.name in arms and a.ref is not None}
    need |= {c.ref for c in plan.claims if c.arm in arms}
    return [a.name for a in plan.arms if a.name in need]


def with_budget(plan: Plan, overrides: dict[str, Any]) -> Plan:
    """The plan with `common` budget keys overridden (e.g. --epochs 1 for a quick look). Its runs and
    report get their own name (`<name>-epochs1-...`), so they never mix with the full plan's."""
    if not overrides:
        return plan
    check_keys(overrides, source=" (ablate budget override)")
    overrides = {normalize_key(k): v for k, v in overrides.items()}
    for reserved in ("seed", "output", "experiment", "resume"):
        if reserved in overrides:
            raise ValueError(f"'{reserved}' is set by the harness; it cannot be overridden")
    tag = "-".join(f"{k.replace('_', '')}{v}" for k, v in sorted(overrides.items()))
    new = dataclasses.replace(plan, common={**plan.common, **overrides}, name=f"{plan.name}-{tag}",
                              overrides={**plan.overrides, **overrides})
    for a in new.arms:
        new.config(a, 0)
    return new


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


# Defaults as they were when runs were first recorded, for keys whose default changed since: a run
# keeps its hash (and its recorded result) across the change. rep_init became "scaled" on 2026-12-07.
# batch_size became None (auto: 128, smaller on small data) on 2026-12-07.
HASH_DEFAULTS = {"rep_init": "reference", "batch_size": 128}


def config_hash(cfg: TrainConfig) -> str:
    """What decides a run's result (not where it is written or how it is resumed). Keys left at their
    defaults are not hashed, so a key added to TrainConfig later does not make finished runs stale."""
    defaults = dict(TrainConfig().to_dict(), **HASH_DEFAULTS)
    d = {k: v for k, v in cfg.to_dict().items()
         if v != defaults.get(k) and k not in ("resume", "output", "experiment", "log_interval",
                                                "checkpoint_interval", "workers", "device")}
    if d.get("output_stride") == 16 * (cfg.stem_stride or 2):  # the layout every run had before the knob
        del d["output_stride"]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_mapping(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a mapping of key: value")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}' in {where}; allowed: {', '.join(sorted(allowed))}")
    return obj


def _train_keys(obj: Any, where: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a mapping of recipe keys")
    check_keys(obj, source=f" in {where}")
    return {normalize_key(k): v for k, v in obj.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A key given twice in one mapping is an error: YAML would silently keep the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def resolve_recipe(plan_path: Path, recipe: Optional[str]) -> Optional[str]:
    """A plan's `recipe`: beside the plan file first; then, as before, the working directory (so the
    shipped plans, which name `recipes/NAME.yaml` from the clone's root, resolve as they always did);
    then a shipped recipe of that name."""
    if recipe is None:
        return None
    beside = plan_path.parent / recipe
    if not Path(recipe).is_absolute() and beside.is_file():
        return str(beside)
    if Path(recipe).is_file():
        return str(recipe)
    try:
        return str(find_recipe(recipe))
    except (FileNotFoundError, ValueError):
        raise FileNotFoundError(f"{plan_path}: recipe not found: {recipe} (looked beside the plan, in the "
                                f"working directory and among the shipped recipes)") from None


def _claim(c: Any, i: int, arms: list[Arm], p: Path) -> Claim:
    c = _check_mapping(c, _CLAIM_KEYS, f"{p} claim {i + 1}")
    names = [a.name for a in arms]
    arm = c.get("arm")
    ref = c.get("ref") or next((a.ref for a in arms if a.name == arm), None)
    for which, name in (("arm", arm), ("ref", ref)):
        if name not in names:
            raise ValueError(f"{p}: claim {i + 1}: {which} {name!r} is not an arm of this plan")
    if c.get("expect", "higher") not in ("higher", "lower", "same"):
        raise ValueError(f"{p}: claim {i + 1}: expect must be higher, lower or same")
    ingredient = c.get("ingredient")
    if ingredient is not None and ingredient not in INGREDIENTS:
        raise ValueError(f"{p}: claim {i + 1}: ingredient {ingredient!r} is not one of the budget chart's: "
                         f"{', '.join(INGREDIENTS)}")
    return Claim(claim=str(c.get("claim", "")), arm=arm, ref=ref, expect=c.get("expect", "higher"),
                 margin=float(c.get("margin", 1.0)), ingredient=ingredient, variant=str(c.get("variant") or ""))


def load_plan(path: str | Path, *, seeds: Optional[int] = None, output: Optional[str] = None,
              results_dir: Optional[str] = None) -> Plan:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ablation plan not found: {p}")
    try:
        raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None
    raw = _check_mapping(raw, _PLAN_KEYS, str(p))
    for key in ("name", "arms"):
        if key not in raw:
            raise ValueError(f"{p}: missing '{key}'")
    recipe = resolve_recipe(p, raw.get("recipe"))
    common = _train_keys(raw.get("common"), f"{p} common")
    for reserved in ("seed", "output", "experiment", "resume"):
        if reserved in common:
            raise ValueError(f"{p}: '{reserved}' is set by the harness, not in common")
    if not isinstance(raw["arms"], list) or not raw["arms"]:
        raise ValueError(f"{p}: arms must be a non-empty list")
    arms: list[Arm] = []
    for i, a in enumerate(raw["arms"]):
        a = _check_mapping(a, _ARM_KEYS, f"{p} arm {i + 1}")
        if "name" not in a:
            raise ValueError(f"{p}: arm {i + 1} has no name")
        name = str(a["name"])
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{p}: arm name {name!r} may use letters, digits, '-' and '_' only")
        kd = a.get("kd")
        if kd not in (None, "online", "cached"):
            raise ValueError(f"{p}: arm {name}: kd must be online or cached, not {kd!r}")
        arms.append(Arm(name=name, set=_train_keys(a.get("set"), f"{p} arm {name}"), ref=a.get("ref"),
                        desc=str(a.get("desc", "")), kd=kd))
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{p}: arm name '{dup[0]}' is used twice")
    for a in arms:
        if a.ref is not None and a.ref not in names:
            raise ValueError(f"{p}: arm {a.name}: ref '{a.ref}' is not an arm of this plan")
    metrics = tuple(raw.get("metrics") or ("top1",))
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"{p}: unknown metric '{bad[0]}'; choose from {', '.join(METRICS)}")
    teacher = raw.get("teacher")
    if teacher is not None:
        teacher = dict(_check_mapping(teacher, _TEACHER_KEYS, f"{p} teacher"))
        teacher["set"] = _train_keys(teacher.get("set"), f"{p} teacher set")
        teacher["recipe"] = resolve_recipe(p, teacher.get("recipe"))
        teacher.setdefault("views", 3)
    if any(a.kd for a in arms) and teacher is None:
        raise ValueError(f"{p}: arms with kd need a teacher section")
    claims = [_claim(c, i, arms, p) for i, c in enumerate(raw.get("claims") or [])]
    plan = Plan(name=str(raw["name"]), recipe=recipe, common=common, arms=arms,
                seeds=int(seeds if seeds is not None else raw.get("seeds", 3)), metrics=metrics, teacher=teacher,
                output=output or raw.get("output", "runs/ablation"),
                results_dir=results_dir or raw.get("results_dir", "docs/results"),
                description=str(raw.get("description", "")).strip(), source=str(p), claims=claims)
    if plan.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    for a in arms:  # every arm must resolve to a valid config now, not hours into the grid
        plan.config(a, 0)
    return plan
