"""Run an ablation plan: each arm x seed is an ordinary `ghostnetv3 train` run in its own process.

Resumable: a finished run leaves `ablation_result.json` in its run directory and is skipped next
time; a run stopped midway continues with `--resume` (exactly, as the engine resumes); a run that
died before its first checkpoint starts again. The report is rewritten after every finished run, and
it holds every run's result with its config hash: on a fresh clone (run directories gone, the
committed report there) the runs it records under the same config count as finished.

Two processes may share a plan (e.g. one per machine on a shared disk, or a second started by
mistake): each run is claimed by one of them (`lock.py`); the other skips it and says which process
has it. The teacher, each seed's teacher cache and the report are waited for, not skipped. A failed
run is reported with the line that says why (the command's error line, not its progress bar).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from ghostnetv3.distill.cache import TeacherCache
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.config import load_config
from ghostnetv3.engine.evaluate import evaluate_checkpoint

from .budget import write_budget
from .lock import holder, try_claim, waiting_claim
from .plan import Arm, Plan, config_hash, run_name
from .report import write_report

RESULT = "ablation_result.json"
CLI = [sys.executable, "-m", "ghostnetv3.cli"]


class RunFailed(RuntimeError):
    pass


class RunBusy(RuntimeError):
    """Another live `ablate` process holds the run: this one leaves it to that one."""


# a tqdm bar ("epoch 1/3:  45%|####5     | 70/156 [00:10<00:12, 6.8it/s]") or its erasure is no reason
_PROGRESS = re.compile(r"\d+%\||\|\s*\d+/\d*\s*\[|^\s*\d+it \[")
_USER_ERROR = re.compile(r"^ghostnetv3 [\w-]+: (error|interrupted)")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*)?(Error|Exception|Exit|Interrupt|Busy|Failed)\b(: .*)?$")


def error_line(output: str, rc: int) -> str:
    """The line that says why a command failed, from its output: its `ghostnetv3 CMD: error: ...`
    line, else the last exception line of a traceback, else its last line that is not a progress
    bar; a process killed by a signal says which."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", output)]
    lines = [ln for ln in lines if ln and not _PROGRESS.search(ln)]
    line = (next((ln for ln in reversed(lines) if _USER_ERROR.match(ln)), None)
            or next((ln for ln in reversed(lines) if _EXCEPTION.match(ln)), None)
            or (lines[-1] if lines else "no output"))
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        line = f"killed by {name}" + ("" if line == "no output" else f"; last line: {line}")
    return line


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def scores_from_confusion(cm: list[list[int]]) -> dict[str, float]:
    """top-1, macro-F1 and balanced accuracy (mean per-class recall), in %, from a confusion matrix
    (rows: true class). A class absent from the validation set is left out of both means."""
    k = len(cm)
    total = sum(map(sum, cm))
    correct = sum(cm[i][i] for i in range(k))
    f1s, recalls = [], []
    for i in range(k):
        support = sum(cm[i])
        if support == 0:
            continue
        predicted = sum(cm[j][i] for j in range(k))
        tp = cm[i][i]
        recall = tp / support
        precision = tp / predicted if predicted else 0.0
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
        recalls.append(recall)
    return {"top1": 100.0 * correct / max(total, 1), "macro_f1": 100.0 * sum(f1s) / max(len(f1s), 1),
            "balanced_acc": 100.0 * sum(recalls) / max(len(recalls), 1)}


def score_run(run_dir: Path) -> dict[str, Any]:
    """Scores of the model a run ends with: the fused EMA weights when EMA is on, else the fused raw
    weights, from last.pt (the final epoch: no selection on the validation set)."""
    last = run_dir / ckpt_io.LAST
    # the final EMA when there is one, whatever validation preferred: no selection on the validation set
    state = ckpt_io.load(last)
    has_ema = state.get("state_dict_ema") is not None
    r = evaluate_checkpoint(last, confusion=True, weights="ema" if has_ema else "raw")
    out = scores_from_confusion(r["fused"]["confusion"])
    out.update(raw_top1=r["raw"]["top1"], ema_top1=(r["ema"] or {}).get("top1"), scored=r["fused_from"],
               fusion_max_diff=r["fusion_max_diff"], n_val=r["n"], global_step=state.get("global_step"))
    last = _last_record(run_dir, "epoch")
    if last is not None:
        out.update(wall_s=last.get("elapsed_s"), train_img_s=last.get("train_img_s"), epochs=last["epoch"])
    return out


def _last_record(run_dir: Path, kind: str) -> Optional[dict[str, Any]]:
    """The last metrics.jsonl record of type `kind` (a line cut short by a kill is skipped), or None."""
    metrics = run_dir / ckpt_io.METRICS_FILE
    found = None
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") == kind:
            found = rec
    return found


def divergence(run_dir: Path) -> Optional[dict[str, Any]]:
    """Where `ghostnetv3 train` recorded that its loss became NaN/inf (epoch, step, global_step,
    loss), or None."""
    rec = _last_record(run_dir, "diverged")
    if rec is None:
        return None
    # the loss as text: NaN/inf are not JSON, and the committed report should stay JSON
    return {"epoch": rec.get("epoch"), "step": rec.get("step"), "global_step": rec.get("global_step"),
            "loss": str(rec.get("loss"))}


class Runner:
    def __init__(self, plan: Plan, *, jobs: int = 1, threads: Optional[int] = None, log: Callable = print,
                 on_result: Optional[Callable[[], None]] = None):
        self.plan = plan
        self.jobs = max(1, jobs)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.jobs)
        self.log = log
        self.on_result = on_result
        self.root = plan.run_root
        self._lock = threading.Lock()
        self._teacher_lock = threading.Lock()
        self._cache_locks: dict[int, threading.Lock] = {}
        self.skipped: list[str] = []  # runs the last run() left to another live process

    # ----------------------------------------------------------------------------- processes
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def _call(self, args: list[str], log_path: Path, what: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(f"\n$ ghostnetv3 {' '.join(args)}\n")
            f.flush()
            start = f.tell()
            rc = subprocess.call(CLI + args, stdout=f, stderr=subprocess.STDOUT, env=self._env())
        if rc != 0:
            with open(log_path, "rb") as f:  # this command's output only, not an earlier attempt's
                f.seek(start)
                output = f.read().decode(errors="replace")
            raise RunFailed(f"{what} failed (exit {rc}): {error_line(output, rc)} — full log: {log_path}")

    def _train(self, cfg, run_dir: Path, what: str) -> None:
        """Train (or continue) one run; returns when last.pt holds the final epoch."""
        cfg_path = self.root / "_configs" / f"{run_dir.name}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.save(cfg_path)
        args = ["train", "-c", str(cfg_path)]
        if (run_dir / ckpt_io.LAST).exists():
            state = ckpt_io.load(run_dir / ckpt_io.LAST)
            if state.get("epoch", 0) >= cfg.epochs and state.get("step", 0) == 0:
                return  # trained; only the scoring was missing
            args += ["--resume", str(run_dir)]
        elif run_dir.exists():
            shutil.rmtree(run_dir)  # died before its first checkpoint: nothing worth keeping
        self._call(args, self.root / "_logs" / f"{run_dir.name}.log", what)

    def _check_stale(self, result_path: Path, h: str) -> Optional[dict]:
        if not result_path.exists():
            return None
        res = json.loads(result_path.read_text())
        if res.get("config_hash") != h:
            raise ValueError(f"{result_path.parent} was run with another config than this plan now gives "
                             f"(the plan or a recipe changed); delete that directory to rerun it, or set another "
                             f"output in the plan")
        return res

    # ----------------------------------------------------------------------------- the committed report
    @property
    def report_path(self) -> Path:
        return Path(self.plan.results_dir) / f"ablation_{self.plan.name}.json"

    def recorded(self) -> dict[str, dict]:
        """The runs the report in results_dir records, by run name (empty without a report)."""
        if not self.report_path.exists():
            return {}
        try:
            summary = json.loads(self.report_path.read_text())
            return {run_name(r["arm"], r["seed"]): r for a in summary["arms"] for r in a["runs"]}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{self.report_path} is not an ablation report ({e}); restore it from git "
                             f"or delete it (its runs are then trained again)") from None

    def restore_recorded(self) -> int:
        """Write back the result of every run the report records under the config this plan now
        gives, where its run directory has none (a fresh clone). Returns how many were restored;
        a recorded run whose config changed since is left out (it runs again)."""
        recorded = self.recorded()
        restored = 0
        for arm in self.plan.arms:
            for seed in range(self.plan.seeds):
                name = run_name(arm.name, seed)
                rec = recorded.get(name)
                result_path = self.root / name / RESULT
                if rec is None or result_path.exists():
                    continue
                if rec.get("config_hash") != config_hash(self.arm_config(arm, seed)):
                    self.log(f"[ablate] {name}: the report's result is for another config; running it again")
                    continue
                result_path.parent.mkdir(parents=True, exist_ok=True)
                _write_json(result_path, dict(rec, restored_from=str(self.report_path)))
                restored += 1
        if restored:
            self.log(f"[ablate] {restored} finished run(s) restored from {self.report_path}")
        return restored

    def done(self, arm: Arm, seed: int) -> bool:
        return (self.root / run_name(arm.name, seed) / RESULT).exists()

    # ----------------------------------------------------------------------------- teacher
    @property
    def teacher_home(self) -> Path:
        """Where the teacher's run and its exported ImageNet weights live: the plan's own folder, or with
        `teacher: {shared: true}` one folder per teacher config beside every plan's runs, so plans with
        the same teacher (the 60k grid and the 20k one with its teacher) train it once."""
        return self.plan.run_root.parent / "_teachers" if self._shared_teacher else self.root

    @property
    def _shared_teacher(self) -> bool:
        return bool(self.plan.teacher and self.plan.teacher.get("shared"))

    @property
    def teacher_dir(self) -> Path:
        if not self._shared_teacher:  # also for a plan without a teacher (nothing is ever there)
            return self.root / "teacher"
        cfg = self.teacher_config()
        return Path(cfg.output) / cfg.experiment

    def teacher_config(self):
        t = self.plan.teacher
        values = dict(t["set"])
        if t.get("export"):
            name = f"_{t['export']}.safetensors" if t.get("shared") else "_teacher_init.safetensors"
            values["init_checkpoint"] = str(self.teacher_home / name)
            values.setdefault("reset_head", True)
        values.update(seed=0, output=str(self.teacher_home), experiment="teacher")
        cfg = load_config(t.get("recipe"), **values)
        # a shared teacher's folder is named by what decides it, so a changed teacher is a new one
        return cfg.replace(experiment=f"{cfg.model}-{config_hash(cfg)}") if t.get("shared") else cfg

    def ensure_teacher(self) -> dict[str, Any]:
        """Train and score the teacher once (the first KD run that needs it does; the others wait)."""
        lock = self.teacher_dir.with_suffix(".lock") if self._shared_teacher else self.lock_path("teacher")
        with self._teacher_lock, waiting_claim(lock, self._announce_wait("the teacher")):
            return self._ensure_teacher()

    def _announce_wait(self, what: str) -> Callable[[Optional[str]], None]:
        return lambda pid: self.log(f"[ablate] waiting for {'process ' + pid if pid else 'another process'}, "
                                    f"which is preparing {what} of this plan")

    def _ensure_teacher(self) -> dict[str, Any]:
        cfg = self.teacher_config()
        h = config_hash(cfg)
        result_path = self.teacher_dir / RESULT
        res = self._check_stale(result_path, h)
        if res is not None:
            return res
        init = cfg.init_checkpoint
        if self.plan.teacher.get("export") and not Path(init).exists():
            Path(init).parent.mkdir(parents=True, exist_ok=True)
            self._call(["export-teacher", self.plan.teacher["export"], "-o", init],
                       self.root / "_logs" / "teacher.log", "export-teacher")
        self.log(f"[ablate] training the teacher ({cfg.model}) -> {self.teacher_dir}")
        self._train(cfg, self.teacher_dir, "teacher")
        res = dict(score_run(self.teacher_dir), config_hash=h, model=cfg.model)
        _write_json(result_path, res)
        self.log(f"[ablate] teacher top-1 {res['top1']:.2f}")
        return res

    def cache_path(self, seed: int) -> Path:
        return self.root / "teacher-cache" / f"s{seed}.kdcache"

    def ensure_cache(self, arm: Arm, seed: int) -> Path:
        with self._lock:
            lock = self._cache_locks.setdefault(seed, threading.Lock())
        wait = self._announce_wait(f"the seed-{seed} teacher cache")
        with lock, waiting_claim(self.lock_path(f"cache-s{seed}"), wait):
            path = self.cache_path(seed)
            cfg = self.plan.config(arm, seed)
            cfg_path = self.root / "_configs" / f"cache-s{seed}.yaml"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg.save(cfg_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            t = self.plan.teacher
            args = ["cache-teacher", "-c", str(cfg_path), "--teacher", str(self.teacher_dir),
                    "--views", str(t["views"]), "--output", str(path), "--no-progress"]
            if t.get("input_size"):
                args += ["--teacher-input-size", str(t["input_size"])]
            # cache-teacher checks an existing file against this data/augmentation/teacher: a no-op if it fits
            self._call(args, self.root / "_logs" / f"cache-s{seed}.log", f"cache-teacher seed {seed}")
            return path

    # ----------------------------------------------------------------------------- arms
    def arm_config(self, arm: Arm, seed: int):
        extra: dict[str, Any] = {}
        if arm.kd is not None:
            if self.plan.teacher.get("input_size"):
                extra["teacher_input_size"] = self.plan.teacher["input_size"]
            if arm.kd == "online":
                extra["teacher"] = str(self.teacher_dir)
            else:
                extra["teacher_cache"] = str(self.cache_path(seed))
        return self.plan.config(arm, seed, **extra)

    def lock_path(self, name: str) -> Path:
        return self.root / "_locks" / f"{name}.lock"

    def run_arm(self, arm: Arm, seed: int) -> dict[str, Any]:
        """Train and score one run, or return its recorded result; raises RunBusy when another live
        process has claimed it (that one trains it)."""
        name = run_name(arm.name, seed)
        claim = try_claim(self.lock_path(name))
        if claim is None:
            pid = holder(self.lock_path(name))
            raise RunBusy(f"{name}: being trained by {'process ' + pid if pid else 'another process'} "
                          f"on this plan; left to it")
        try:
            return self._run_claimed(arm, seed)
        finally:
            claim.release()

    def _run_claimed(self, arm: Arm, seed: int) -> dict[str, Any]:
        cfg = self.arm_config(arm, seed)
        h = config_hash(cfg)
        run_dir = self.root / run_name(arm.name, seed)
        result_path = run_dir / RESULT
        res = self._check_stale(result_path, h)
        if res is not None:
            return res
        if arm.kd is not None:
            # trained on first need, so with --jobs > 1 the runs without KD go on beside it
            self.ensure_teacher()
        if arm.kd == "cached":
            self.ensure_cache(arm, seed)
        name = run_name(arm.name, seed)
        self.log(f"[ablate] {name}: training")
        t0 = time.time()
        diverged = None
        try:
            self._train(cfg, run_dir, name)
        except RunFailed:
            # a loss that became NaN/inf is an outcome of the arm's config, not a crash: the run is
            # recorded with the score of its last good checkpoint (what a user of that config is left
            # with), so the statistics count it and a rerun does not retry it forever
            diverged = divergence(run_dir)
            if diverged is None or not (run_dir / ckpt_io.LAST).exists():
                raise
            self.log(f"[ablate] {name}: diverged (loss {diverged['loss']} at global step "
                     f"{diverged['global_step']}); scoring its last good checkpoint")
        res = dict(score_run(run_dir), config_hash=h, arm=arm.name, seed=seed,
                   harness_wall_s=round(time.time() - t0, 1))
        if diverged is not None:
            res["diverged"] = diverged
        _write_json(result_path, res)
        self.log(f"[ablate] {name}: top-1 {res['top1']:.2f} "
                 f"(macro-F1 {res['macro_f1']:.2f}, balanced {res['balanced_acc']:.2f})"
                 + (" — diverged, last good checkpoint" if diverged else ""))
        if self.on_result is not None:
            with self._lock:
                self.on_result()
        return res

    def todo(self, arms: Optional[list[str]] = None) -> list[tuple[Arm, int]]:
        """Seed-major order: every arm gets seed 0 before any gets seed 1, so a stopped grid is balanced."""
        chosen = [a for a in self.plan.arms if arms is None or a.name in arms]
        return [(a, s) for s in range(self.plan.seeds) for a in chosen]

    def run(self, arms: Optional[list[str]] = None) -> list[str]:
        """Run what is not finished; returns the failures (one line each) — the others still run."""
        self.restore_recorded()
        todo = self.todo(arms)
        # the teacher is trained by the first KD run still to train (a fresh clone with them all
        # recorded needs none), in that run's worker: with --jobs > 1 the others go on meanwhile
        failures: list[str] = []

        self.skipped = []

        def one(numbered):
            i, (arm, seed) = numbered
            self.log(f"[ablate] run {i}/{len(todo)}: {run_name(arm.name, seed)}")
            try:
                self.run_arm(arm, seed)
            except RunFailed as e:
                self.log(f"[ablate] {e}")
                failures.append(str(e))
            except RunBusy as e:
                self.log(f"[ablate] {e}")
                self.skipped.append(run_name(arm.name, seed))

        numbered = list(enumerate(todo, start=1))
        if self.jobs == 1:
            for item in numbered:
                one(item)
        else:
            with ThreadPoolExecutor(self.jobs) as pool:
                list(pool.map(one, numbered))
        return failures

    def results(self, recorded: bool = False) -> dict[str, Any]:
        """Every finished run's result, by arm, and the teacher's (None when absent). With `recorded`
        (a report-only rewrite: nothing trains), a run without a result in its directory is taken
        from the committed report whatever config it was recorded under; those recorded under another
        config than the plan now gives are listed in `earlier_config`."""
        report = self.recorded() if recorded else {}
        by_arm: dict[str, list[dict]] = {a.name: [] for a in self.plan.arms}
        earlier: list[str] = []
        unreported = 0  # results in run directories that the report does not hold
        for a in self.plan.arms:
            for s in range(self.plan.seeds):
                p = self.root / run_name(a.name, s) / RESULT
                if p.exists():
                    res = json.loads(p.read_text())
                    by_arm[a.name].append(res)
                    rec = report.get(run_name(a.name, s), {})
                    unreported += any(rec.get(k) != res.get(k) for k in ("config_hash", "top1"))
                elif run_name(a.name, s) in report:
                    rec = report[run_name(a.name, s)]
                    by_arm[a.name].append(rec)
                    if rec.get("config_hash") != config_hash(self.arm_config(a, s)):
                        earlier.append(run_name(a.name, s))
        teacher = None
        if (self.teacher_dir / RESULT).exists():
            teacher = json.loads((self.teacher_dir / RESULT).read_text())
        elif self.report_path.exists():  # a fresh clone: the teacher the committed report names
            teacher = json.loads(self.report_path.read_text()).get("teacher")
        if teacher is not None:
            teacher = {**teacher, **self._teacher_on_student_view()}
        out = {"arms": by_arm, "teacher": teacher, "earlier_config": earlier}
        if recorded and self.report_path.exists() and not unreported:  # nothing new: its machine and date stay
            old = json.loads(self.report_path.read_text())
            out.update(machine=old.get("machine"), updated=old.get("updated"))
        return out

    def _teacher_on_student_view(self) -> dict[str, Any]:
        """The teacher's top-1 through this plan's student eval view, as `cache-teacher` recorded it in
        a seed's cache (the same for every seed); {} when no cache holds it."""
        for seed in range(self.plan.seeds):
            path = self.cache_path(seed)
            try:
                scored = TeacherCache(path).header.get("extra", {}).get("teacher_val") if path.exists() else None
            except ValueError:  # a damaged cache is rebuilt by the next KD run; the report does without it
                scored = None
            if scored:
                return {"student_view_top1": scored["top1"], "student_img_size": scored["student_img_size"],
                        "teacher_input_size": scored["teacher_input_size"]}
        return {}

    def write_report(self, recorded: bool = False) -> dict[str, Path]:
        """Rewrite the report from the results on disk; one process at a time, so the last one written
        holds every run finished by then (two processes may share a plan)."""
        with waiting_claim(self.lock_path("report")):
            paths = write_report(self.plan, self.results(recorded=recorded))
            if any(c.ingredient for c in self.plan.claims) and not self.plan.overrides:
                paths["budget"] = write_budget(self.plan.results_dir)["md"]
            return paths
