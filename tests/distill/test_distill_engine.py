"""Distillation end to end through the engine and the CLI, on a slice of real Fashion-MNIST:
train a tiny teacher → `ghostnetv3 cache-teacher` → train a student with --teacher-cache (no teacher
forward runs) or online with --teacher; a cache built with other flags is refused."""
from __future__ import annotations

import json
import math

import pytest



# timm's test_efficientnet (100k params) at 16 px: a step is well under a second on two busy cores
TINY = dict(model="test_efficientnet", data="fashion-mnist", img_size=16, crop_mode="pad_crop", padding=2,
            train_subset=192, val_subset=64, batch_size=32, epochs=1, lr=0.05, warmup_epochs=0,
            model_ema=False, log_interval=0, seed=7, channels_last=False)  # pinned: see engine_helpers.TINY


def _flags(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from ghostnetv3.engine.config import TrainConfig
    from ghostnetv3.distill import train

    out = tmp_path_factory.mktemp("runs")
    train(TrainConfig(**{**TINY, "output": str(out), "experiment": "teacher"}))
    return out / "teacher"


@pytest.fixture(scope="module")
def cache_file(teacher_run, tmp_path_factory):
    from ghostnetv3.cli import main

    path = tmp_path_factory.mktemp("cache") / "teacher.kdcache"
    args = ["cache-teacher", "--teacher", str(teacher_run), "--views", "3", "--output", str(path), "--no-progress"]
    assert main(args + _flags(**{k: v for k, v in TINY.items() if k not in ("epochs",)})) == 0
    return path


def test_cache_teacher_cli_builds_a_complete_cache(cache_file, teacher_run):
    from ghostnetv3.distill.cache import TeacherCache

    cache = TeacherCache(cache_file)
    assert cache.views == 3 and cache.num_samples == 192 and cache.store == "logits"
    assert cache.header["teacher"]["name"].startswith("run:teacher/test_efficientnet")
    assert cache.header["extra"]["recipe"]["img_size"] == 16


def test_cache_teacher_records_the_teachers_score_through_the_students_view(cache_file, teacher_run):
    from ghostnetv3.distill.cache import TeacherCache
    from ghostnetv3.engine.evaluate import evaluate_checkpoint

    scored = TeacherCache(cache_file).header["extra"]["teacher_val"]
    # the student's view is the teacher's own input here (16 px both): the score is the teacher run's own
    own = evaluate_checkpoint(teacher_run / "best.pt", weights="raw")
    assert scored["n"] == own["n"] == 64
    assert scored["top1"] == pytest.approx(own["raw"]["top1"], abs=1e-3)
    assert scored["student_img_size"] == 16 and scored["teacher_input_size"] == 16


def test_cache_teacher_cli_reuses_a_matching_cache_and_refuses_a_stale_one(cache_file, teacher_run, capsys):
    from ghostnetv3.cli import main

    base = ["cache-teacher", "--teacher", str(teacher_run), "--output", str(cache_file), "--no-progress"]
    flags = _flags(**{k: v for k, v in TINY.items() if k != "epochs"})
    assert main(base + ["--views", "3"] + flags) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(base + ["--views", "5"] + flags) == 1   # K differs: refused, file kept
    assert "requested K=5" in capsys.readouterr().err and cache_file.exists()


def test_student_trains_from_the_cache_without_running_the_teacher(cache_file, tmp_path, monkeypatch):
    from ghostnetv3.distill.teachers import Teacher
    from ghostnetv3.engine.config import TrainConfig
    from ghostnetv3.distill import train

    def no_teacher(*a, **k):
        raise AssertionError("a teacher ran during cached distillation")
    monkeypatch.setattr(Teacher, "forward", no_teacher)
    summary = train(TrainConfig(**{**TINY, "output": str(tmp_path), "experiment": "student", "epochs": 2,
                                   "teacher_cache": str(cache_file), "kd_loss": "kl", "kd_temperature": 2.0}))
    assert math.isfinite(summary["train_loss"]) and summary["epoch"] == 2


def test_a_cache_built_with_other_augmentation_is_refused(cache_file, tmp_path):
    from ghostnetv3.distill.cache import CacheMismatch
    from ghostnetv3.engine.config import TrainConfig
    from ghostnetv3.distill import train

    with pytest.raises(CacheMismatch, match="augment.padding 2 != 3"):
        train(TrainConfig(**{**TINY, "output": str(tmp_path), "experiment": "s", "padding": 3,
                             "teacher_cache": str(cache_file)}))
    with pytest.raises(CacheMismatch, match="dataset"):
        train(TrainConfig(**{**TINY, "output": str(tmp_path), "experiment": "s2", "train_subset": 160,
                             "teacher_cache": str(cache_file)}))


def test_student_trains_with_an_online_teacher(teacher_run, tmp_path):
    from ghostnetv3.engine.config import TrainConfig
    from ghostnetv3.distill import train

    summary = train(TrainConfig(**{**TINY, "output": str(tmp_path), "experiment": "online",
                                   "teacher": str(teacher_run), "kd_loss": "soft-ce"}))
    assert math.isfinite(summary["train_loss"])
    rows = [json.loads(line) for line in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 1
