"""`ghostnetv3 ablate`: plan validation, the statistics, and a tiny grid run end to end on real
Fashion-MNIST (two arms, one seed, a few steps), including skip-when-finished and stale detection."""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from ghostnetv3.ablate import load_plan, paired_diff, scores_from_confusion
from ghostnetv3.ablate.plan import config_hash
from ghostnetv3.ablate.report import verdict
from ghostnetv3.cli import main

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "fashion_mnist.yaml")
TINY = {"train_subset": 128, "val_subset": 64, "epochs": 1, "batch_size": 64, "img_size": 32,
        "warmup_epochs": 0, "log_interval": 0}


def write_plan(tmp_path: Path, **changes) -> Path:
    plan = {"name": "tiny", "recipe": RECIPE, "common": dict(TINY), "seeds": 1, "metrics": ["top1", "macro_f1"],
            "output": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
            "arms": [{"name": "plain", "desc": "no branches",
                      "set": {"num_conv_branches": 1, "scale_branch": False, "identity_branch": False,
                              "model_ema": False}},
                     {"name": "rep2", "ref": "plain", "desc": "2 branches + EMA",
                      "set": {"num_conv_branches": 2, "model_ema": True}}],
            "claims": [{"claim": "branches help", "arm": "rep2", "expect": "higher"}]}
    plan.update(changes)
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(plan))
    return p


# ------------------------------------------------------------------------------------ statistics

def test_scores_from_confusion_by_hand():
    cm = [[8, 2, 0],   # class 0: recall 0.8
          [1, 1, 0],   # class 1: recall 0.5
          [0, 0, 0]]   # class 2 absent: left out of the class means
    s = scores_from_confusion(cm)
    assert s["top1"] == pytest.approx(100 * 9 / 12)
    assert s["balanced_acc"] == pytest.approx(100 * (0.8 + 0.5) / 2)
    f1_0 = 2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)
    f1_1 = 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5)
    assert s["macro_f1"] == pytest.approx(100 * (f1_0 + f1_1) / 2)


def test_paired_diff_interval_by_hand():
    a = {0: 80.0, 1: 82.0, 2: 81.0, 5: 99.0}
    b = {0: 79.0, 1: 80.0, 2: 81.5}  # seed 5 has no partner: not used
    d = paired_diff(a, b)
    diffs = [1.0, 2.0, -0.5]
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)
    assert d["n"] == 3 and d["mean"] == pytest.approx(statistics.fmean(diffs))
    assert d["ci"] == pytest.approx([statistics.fmean(diffs) - half, statistics.fmean(diffs) + half])
    assert paired_diff({0: 1.0}, {0: 0.5}) == {"n": 1, "mean": 0.5, "ci": None}
    assert paired_diff({0: 1.0}, {1: 0.5})["mean"] is None


def test_ema_verdict_follows_the_interval():
    from ghostnetv3.ablate.report import ema_verdict
    assert ema_verdict(paired_diff({0: 80.0, 1: 81.0, 2: 80.5}, {0: 81.0, 1: 81.9, 2: 81.6})) == "EMA below raw"
    assert ema_verdict(paired_diff({0: 82.0, 1: 83.0, 2: 82.6}, {0: 81.0, 1: 81.9, 2: 81.6})) == "EMA above raw"
    assert ema_verdict(paired_diff({0: 80.0, 1: 83.0}, {0: 81.0, 1: 81.0})).startswith("no difference shown")
    assert ema_verdict(paired_diff({0: 80.0}, {0: 81.0})) == "fewer than 2 seeds"


def test_verdicts_follow_the_interval():
    assert verdict({"ci": [0.1, 2.0]}, "higher") == "reproduced"
    assert verdict({"ci": [-2.0, -0.1]}, "higher") == "not reproduced (the opposite)"
    assert verdict({"ci": [-0.5, 2.0]}, "higher").startswith("inconclusive")
    assert verdict({"ci": [-2.0, -0.1]}, "lower") == "reproduced"
    assert verdict({"ci": [-0.5, 0.5]}, "same") == "reproduced (within ±1)"
    assert verdict({"ci": [-19.0, 19.0]}, "same").startswith("inconclusive")  # wide: no evidence of sameness
    assert verdict({"ci": [-1.5, 1.5]}, "same", margin=2.0).startswith("reproduced")
    assert verdict({"ci": [0.2, 0.5]}, "same").startswith("reproduced")  # a difference, but inside the margin
    assert verdict({"ci": [1.2, 2.0]}, "same").startswith("not reproduced")
    assert verdict({"ci": None, "n": 1, "mean": 3.0}, "higher").startswith("inconclusive")


# ------------------------------------------------------------------------------------ plan errors

@pytest.mark.parametrize("changes, message", [
    ({"arms": [{"name": "a", "set": {"lr": 0.1}, "colour": 1}]}, "unknown key 'colour'"),
    ({"arms": [{"name": "a", "set": {"lrr": 0.1}}]}, "did you mean 'lr'"),
    ({"arms": [{"name": "a", "ref": "b", "set": {}}]}, "ref 'b' is not an arm"),
    ({"arms": [{"name": "a", "set": {}}, {"name": "a", "set": {}}]}, "used twice"),
    ({"arms": [{"name": "a", "kd": "cached", "set": {}}]}, "need a teacher section"),
    ({"arms": [{"name": "a", "kd": "sometimes", "set": {}}]}, "kd must be online or cached"),
    ({"common": {"seed": 3}}, "'seed' is set by the harness"),
    ({"metrics": ["top1", "auc"]}, "unknown metric 'auc'"),
    ({"claims": [{"claim": "x", "arm": "rep2", "ref": "rep9"}]}, "ref 'rep9' is not an arm"),
    ({"claims": [{"claim": "x", "arm": "rep2", "expect": "better"}]}, "expect must be higher, lower or same"),
])
def test_plan_errors_name_the_problem(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_plan(write_plan(tmp_path, **changes))


def test_plan_with_a_key_given_twice_is_refused(tmp_path):
    p = write_plan(tmp_path)
    p.write_text(p.read_text() + "seeds: 2\n")
    with pytest.raises(ValueError, match="key 'seeds' is given twice"):
        load_plan(p)


def test_config_hash_survives_the_rep_init_default_change():
    # recorded runs were hashed while rep_init defaulted to reference (not hashed), scaled hashed
    import hashlib
    from ghostnetv3.engine.config import TrainConfig
    assert TrainConfig().rep_init == "scaled"
    # batch_size: 128 was its default when those runs were recorded (HASH_DEFAULTS), as rep_init's was reference
    recorded = TrainConfig(batch_size=128)
    empty = hashlib.sha256(json.dumps({}, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(recorded.replace(rep_init="reference")) == empty
    scaled = hashlib.sha256(json.dumps({"rep_init": "scaled"}, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(recorded) == config_hash(recorded.replace(rep_init="scaled")) == scaled


def test_config_hash_ignores_where_and_new_default_keys(tmp_path):
    plan = load_plan(write_plan(tmp_path))
    arm = plan.arm("rep2")
    cfg = plan.config(arm, 0)
    assert config_hash(cfg) == config_hash(cfg.replace(output="elsewhere", device="cpu"))
    assert config_hash(cfg) != config_hash(cfg.replace(lr=cfg.lr * 2))
    assert config_hash(plan.config(arm, 0)) != config_hash(plan.config(arm, 1))


# ------------------------------------------------------------------------------------ end to end

def test_tiny_grid_runs_reports_skips_and_refuses_stale(tmp_path, capsys):
    plan_path = write_plan(tmp_path)
    assert main(["ablate", "-c", str(plan_path), "--jobs", "2"]) == 0  # both arms at once, 1 thread each
    out = capsys.readouterr().out
    assert "plain-s0: top-1" in out and "rep2-s0: top-1" in out

    res_dir = tmp_path / "results"
    summary = json.loads((res_dir / "ablation_tiny.json").read_text())
    arms = {a["name"]: a for a in summary["arms"]}
    assert summary["finished_runs"] == 2 == summary["planned_runs"]
    for name in ("plain", "rep2"):
        run = arms[name]["runs"][0]
        assert 0.0 <= run["top1"] <= 100.0 and run["n_val"] == 64 and run["epochs"] == 1
        assert run["fusion_max_diff"] < 1e-3
    assert arms["rep2"]["runs"][0]["scored"] == "ema" and arms["plain"]["runs"][0]["scored"] == "raw"
    diff = arms["rep2"]["top1"]["diff_vs_ref"]
    assert diff["n"] == 1
    assert diff["mean"] == pytest.approx(arms["rep2"]["runs"][0]["top1"] - arms["plain"]["runs"][0]["top1"])
    md = (res_dir / "ablation_tiny.md").read_text()
    assert "| rep2 |" in md and "runs finished: 2 of 2" in md
    # the EMA arm's EMA weights against the same run's raw weights
    rep2 = arms["rep2"]["runs"][0]
    assert [e["arm"] for e in summary["ema_vs_raw"]] == ["rep2"]  # plain has no EMA
    assert summary["ema_vs_raw"][0]["diff"]["mean"] == pytest.approx(rep2["ema_top1"] - rep2["raw_top1"])
    assert "## EMA weights vs the same run's raw weights" in md and "| rep2 | 1 |" in md
    claim = summary["claims"][0]
    assert (claim["arm"], claim["ref"]) == ("rep2", "plain")  # ref defaults to the arm's own
    assert claim["top1"]["verdict"] == "inconclusive (fewer than 2 seeds)"
    assert "| branches help | rep2 − plain > 0 |" in md
    assert (res_dir / "ablation_tiny.png").read_bytes()[:4] == b"\x89PNG"
    # the run directories are ordinary train runs
    cfg = yaml.safe_load((tmp_path / "runs" / "tiny" / "rep2-s0" / "config.yaml").read_text())
    assert cfg["num_conv_branches"] == 2 and cfg["seed"] == 0 and cfg["train_subset"] == 128

    # again: both runs are finished, nothing trains
    result = tmp_path / "runs" / "tiny" / "plain-s0" / "ablation_result.json"
    before = result.stat().st_mtime_ns
    assert main(["ablate", "-c", str(plan_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["done", "plain-s0", "done", "rep2-s0"]
    assert main(["ablate", "-c", str(plan_path)]) == 0
    assert "training" not in capsys.readouterr().out
    assert result.stat().st_mtime_ns == before

    # a fresh clone: the run directories are gone, the committed report is there -> nothing trains,
    # and the restored results carry the report's numbers
    shutil.rmtree(tmp_path / "runs")
    assert main(["ablate", "-c", str(plan_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 finished run(s) restored" in out and out.split()[-4:] == ["done", "plain-s0", "done", "rep2-s0"]
    restored = json.loads(result.read_text())
    assert restored["top1"] == arms["plain"]["runs"][0]["top1"] and "restored_from" in restored
    assert main(["ablate", "-c", str(plan_path)]) == 0
    assert "training" not in capsys.readouterr().out
    again = json.loads((res_dir / "ablation_tiny.json").read_text())
    assert [a["runs"][0]["top1"] for a in again["arms"]] == [arms[n]["runs"][0]["top1"] for n in ("plain", "rep2")]
    # a recorded run whose config has changed since is not restored: it trains again
    shutil.rmtree(tmp_path / "runs")
    write_plan(tmp_path, common=dict(TINY, lr=0.5))
    assert main(["ablate", "-c", str(plan_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plain-s0: the report's result is for another config; running it again" in out
    assert out.split()[-4:] == ["todo", "plain-s0", "todo", "rep2-s0"]
    write_plan(tmp_path)
    assert main(["ablate", "-c", str(plan_path), "--dry-run"]) == 0  # restores both again
    assert capsys.readouterr().out.split()[-4:] == ["done", "plain-s0", "done", "rep2-s0"]

    # a changed budget makes the finished runs stale: refused, with the directory to delete
    write_plan(tmp_path, common=dict(TINY, lr=0.5))
    assert main(["ablate", "-c", str(plan_path)]) == 1
    assert "was run with another config" in capsys.readouterr().err


def test_null_in_an_arm_unsets_the_recipe_value(tmp_path):
    arms = [{"name": "mbv2", "set": {"model": "mobilenetv2_100", "num_conv_branches": None, "stem_stride": None}},
            {"name": "gn", "set": {}}]
    plan = load_plan(write_plan(tmp_path, arms=arms, claims=[]))
    mbv2 = plan.config(plan.arm("mbv2"), 0)
    assert (mbv2.model, mbv2.num_conv_branches, mbv2.stem_stride) == ("mobilenetv2_100", None, None)
    gn = plan.config(plan.arm("gn"), 0)  # the recipe's values where the arm says nothing
    recipe = yaml.safe_load(Path(RECIPE).read_text())
    assert (gn.num_conv_branches, gn.stem_stride) == (recipe["num_conv_branches"], recipe["stem_stride"]) != (None,) * 2


def test_teacher_trains_in_the_first_kd_run_while_runs_without_kd_go_on(tmp_path, monkeypatch):
    """With --jobs 2 the teacher is trained on first need, in the KD run's worker: a run without KD
    starts (and finishes) while it trains, and a second KD run waits for the one teacher."""
    import threading

    from ghostnetv3.ablate import runner as runner_mod

    arms = [{"name": "kd1", "kd": "cached", "set": {}}, {"name": "plain", "set": {}},
            {"name": "kd2", "kd": "cached", "set": {"lr": 0.2}}]
    plan = load_plan(write_plan(tmp_path, arms=arms, claims=[],
                                teacher={"views": 1, "set": {"model": "resnet18"}}))
    events: list[str] = []
    teacher_started, plain_done = threading.Event(), threading.Event()

    def fake_teacher(self):
        events.append("teacher start")
        teacher_started.set()
        assert plain_done.wait(30), "the run without KD did not go on while the teacher trained"
        events.append("teacher done")
        return {"top1": 90.0}

    def fake_train(self, cfg, run_dir, what):
        if what.startswith("plain"):
            assert teacher_started.wait(30)
        run_dir.mkdir(parents=True, exist_ok=True)
        events.append(f"{what} trained")
        if what.startswith("plain"):
            plain_done.set()

    monkeypatch.setattr(runner_mod.Runner, "_ensure_teacher", fake_teacher)
    monkeypatch.setattr(runner_mod.Runner, "ensure_cache", lambda self, arm, seed: None)
    monkeypatch.setattr(runner_mod.Runner, "_train", fake_train)
    monkeypatch.setattr(runner_mod, "score_run", lambda run_dir: {"top1": 50.0, "macro_f1": 50.0, "balanced_acc": 50.0})
    failures = runner_mod.Runner(plan, jobs=2, threads=1, log=lambda *a: None).run()
    assert failures == []
    assert events.index("plain-s0 trained") < events.index("teacher done") < events.index("kd1-s0 trained")
    teacher = [e for e in events if e.startswith("teacher")]
    assert teacher == ["teacher start", "teacher done"] * 2  # kd2 asks too, only after kd1's: one at a time
    assert events.index("teacher done") < events.index("kd2-s0 trained")


def test_a_diverged_run_is_recorded_at_its_last_good_checkpoint_not_retried(tmp_path, monkeypatch):
    """A run whose loss became NaN is an outcome of its config: recorded with the score of its last
    good checkpoint and marked in the report; a run that failed any other way stays a failure."""
    from ghostnetv3.ablate import runner as runner_mod
    from ghostnetv3.ablate.report import to_markdown

    plan = load_plan(write_plan(tmp_path, seeds=2))
    calls: list[str] = []

    def fake_call(self, args, log_path, what):
        calls.append(what)
        run_dir = self.root / what
        run_dir.mkdir(parents=True, exist_ok=True)
        if what == "rep2-s1":  # diverged in epoch 2, after epoch 1's checkpoint
            (run_dir / "last.pt").write_bytes(b"x")
            (run_dir / "metrics.jsonl").write_text(
                json.dumps({"type": "epoch", "epoch": 1, "global_step": 2}) + "\n"
                + json.dumps({"type": "diverged", "epoch": 2, "step": 1, "global_step": 3, "loss": float("nan"),
                              "last_good_checkpoint": True}) + "\n")
            raise runner_mod.RunFailed(f"{what} failed (exit 1): loss became nan")
        if what == "plain-s1":  # a crash: no diverged record
            raise runner_mod.RunFailed(f"{what} failed (exit 1): Killed")

    scores = {"plain-s0": 60.0, "rep2-s0": 62.0, "rep2-s1": 10.0}
    monkeypatch.setattr(runner_mod.Runner, "_call", fake_call)
    monkeypatch.setattr(runner_mod, "score_run", lambda run_dir: {
        "top1": scores[run_dir.name], "macro_f1": scores[run_dir.name], "balanced_acc": 50.0, "global_step": 2})
    logs: list[str] = []
    failures = runner_mod.Runner(plan, jobs=1, threads=1, log=logs.append).run()
    assert len(failures) == 1 and "plain-s1" in failures[0]  # the crash stays a failure
    res = json.loads((tmp_path / "runs" / "tiny" / "rep2-s1" / "ablation_result.json").read_text())
    assert res["top1"] == 10.0 and res["diverged"] == {"epoch": 2, "step": 1, "global_step": 3, "loss": "nan"}
    assert "[ablate] rep2-s1: diverged (loss nan at global step 3); scoring its last good checkpoint" in logs
    assert not (tmp_path / "runs" / "tiny" / "plain-s1" / "ablation_result.json").exists()

    # the report counts it and says so
    results = runner_mod.Runner(plan, log=lambda *a: None).results()
    from ghostnetv3.ablate.report import summarize
    md = to_markdown(summarize(plan, results))
    assert "| rep2 | 2 branches + EMA | plain | 2 (1 diverged) |" in md
    assert "- rep2: s0: 62.00, s1: 10.00 (diverged)" in md
    assert "- rep2 s1: loss nan at epoch 2 step 1 (global step 3); its last good checkpoint (global step 2): top-1 10.00" in md
    json.dumps(summarize(plan, results), allow_nan=False)  # the committed report stays strict JSON

    # run again: the diverged run is finished, only the crashed one is tried again
    calls.clear()
    runner_mod.Runner(plan, jobs=1, threads=1, log=lambda *a: None).run()
    assert calls == ["plain-s1"]
