"""The teacher-output cache: what it stores is what the online teacher says on the replayed view,
and a cache built from anything else is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_augment, make_set, make_teacher
from ghostnetv3.data import InMemoryLoader
from ghostnetv3.distill.cache import (CacheMismatch, TeacherCache, build_cache, remove_dead_temp_files,
                                      view_fn_for)
from ghostnetv3.distill.losses import teacher_probs

K = 4


@pytest.fixture
def built(tmp_path, toy_set, augment, teacher):
    def build(store="logits", **kw):
        return build_cache(teacher, toy_set, augment, K, tmp_path / f"t-{store}.kdcache", store=store, topk=3,
                           batch_size=40, progress=False, **kw)
    return build


@pytest.mark.parametrize("store", ["logits", "topk"])
def test_cached_targets_equal_online_teacher_on_replayed_views(built, toy_set, augment, teacher, store):
    cache = built(store)
    mean, std = augment.cfg.norm_stats()
    loader = InMemoryLoader(toy_set, 24, augment, shuffle=True, drop_last=True, seed=5, view_fn=cache.view_fn(5))
    checked = 0
    for epoch in (0, 1, 6):
        loader.set_epoch(epoch)
        for batch in loader:
            online = teacher.predict(batch.images, mean, std)   # the teacher on what the student sees
            cached = cache.targets(batch.indices, batch.keys)
            if store == "logits":  # fp16 logits: relative rounding 2^-11
                torch.testing.assert_close(cached.logits.float(), online, rtol=2e-3, atol=2e-3)
            else:  # the stored top-k classes and probabilities (fp16), and the remainder mass
                p = online.softmax(-1)
                top, idx = p.topk(3)
                assert torch.equal(cached.index, idx)
                torch.testing.assert_close(cached.probs.float(), top, rtol=2e-3, atol=1e-3)
                torch.testing.assert_close(cached.rest.float(), 1 - top.sum(-1), rtol=2e-3, atol=1e-3)
                dense = teacher_probs(cached)
                torch.testing.assert_close(dense.gather(1, idx), top, rtol=2e-3, atol=1e-3)
            checked += len(batch.indices)
    assert checked == 3 * 96 // 24 * 24


def test_views_are_replayed_exactly(built, toy_set, augment):
    """View v of sample i in the loader is augment(image i, key v): the image the teacher saw."""
    cache = built()
    loader = InMemoryLoader(toy_set, 16, augment, shuffle=True, drop_last=False, seed=1, view_fn=cache.view_fn())
    loader.set_epoch(3)
    batch = next(iter(loader))
    again = augment(toy_set.images[batch.indices], batch.indices, batch.keys)
    assert torch.equal(batch.images, again)
    assert int(batch.keys.max()) < K


def test_view_fn_uses_every_view_once_per_k_epochs():
    fn = view_fn_for(seed=11, views=K)
    idx = torch.arange(50)
    for cycle in range(2):
        seen = torch.stack([fn(idx, cycle * K + e) for e in range(K)], 1)
        assert torch.equal(seen.sort(1).values, torch.arange(K).expand(50, K))
    assert torch.equal(fn(idx, 2), fn(idx, 2))                       # pure: resume replays it
    assert not torch.equal(fn(idx, 0), view_fn_for(12, K)(idx, 0))   # the seed matters
    # uniform: each view equally often at a given epoch, over many samples
    counts = torch.bincount(fn(torch.arange(4000), 1), minlength=K).float()
    assert (counts / 1000 - 1).abs().max() < 0.1


def test_manifest_records_what_the_targets_were_built_from(built, toy_set, teacher):
    cache = built()
    h = cache.header
    assert h["complete"] and h["views"] == K and h["store"] == "logits"
    assert h["dataset"]["fingerprint"] == toy_set.fingerprint() and h["dataset"]["num_samples"] == 96
    assert h["teacher"]["name"] == teacher.name and h["teacher"]["weights"] == teacher.weights
    assert h["transform"]["seed"] == 3 and h["transform"]["augment"]["scale"] == [0.35, 1.0]
    assert cache.arrays["logits"].shape == (K, 96, 10)
    assert "logits" in repr(cache) and cache.path.stat().st_size < 96 * K * 10 * 2 + 16384


def test_mismatch_is_refused(built, toy_set, augment, teacher):
    cache = built()
    cache.check(train_set=toy_set, augment=augment, teacher=teacher, views=K, num_classes=10)  # all match
    cases = {
        "dataset": dict(train_set=make_set(seed=1)),
        "transform: augment.scale": dict(augment=make_augment(scale=(0.3, 1.0))),
        "transform: seed": dict(augment=make_augment(seed=4)),
        "teacher: weights": dict(teacher=make_teacher(seed=1)),
        "views: cache has K=4, requested K=8": dict(views=8),
        "classes": dict(num_classes=5),
    }
    for what, kw in cases.items():
        with pytest.raises(CacheMismatch, match=what.split(":")[0]) as e:
            cache.check(**kw)
        assert what.replace(": seed", "").split(": ")[-1] in str(e.value)
        assert "rebuild it with ghostnetv3 cache-teacher" in str(e.value)


def test_changed_augmentation_code_is_caught_by_the_probe(built, toy_set, augment):
    cache = built()
    orig = augment.apply
    augment.apply = lambda images, params: orig(images, params).flip(-1)  # same config, other views
    with pytest.raises(CacheMismatch, match="augmentation code changed"):
        cache.check(train_set=toy_set, augment=augment)


def test_unfinished_or_foreign_files_are_refused(tmp_path, built):
    cache = built()
    raw = bytearray(cache.path.read_bytes())
    start = raw.index(b'"complete": true')
    raw[start:start + len(b'"complete": true')] = b'"complete":false'
    bad = tmp_path / "bad.kdcache"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="interrupted"):
        TeacherCache(bad)
    (tmp_path / "x.kdcache").write_text(json.dumps({"not": "a cache"}))
    with pytest.raises(ValueError, match="not a ghostnetv3 teacher cache"):
        TeacherCache(tmp_path / "x.kdcache")
    with pytest.raises(FileNotFoundError, match="cache-teacher"):
        TeacherCache(tmp_path / "missing.kdcache")


def test_out_of_range_views_are_a_clear_error(built):
    cache = built()
    with pytest.raises(ValueError, match="view_fn"):
        cache.targets(torch.tensor([0, 1]), torch.tensor([0, 7]))   # e.g. epoch numbers, not view ids


def test_build_fails_cleanly_on_class_mismatch(tmp_path, toy_set, augment):
    with pytest.raises(ValueError, match="predicts 5 classes, the data has 10"):
        build_cache(make_teacher(classes=5), toy_set, augment, 2, tmp_path / "c.kdcache", progress=False)
    assert not any(tmp_path.iterdir())  # no half-written file left behind


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id until the kernel reuses it


def test_a_killed_builds_temp_file_is_removed_and_a_live_ones_kept(tmp_path, built):
    dead = tmp_path / f".t-logits.kdcache.tmp{_dead_pid()}"
    live = tmp_path / f".t-logits.kdcache.tmp{os.getppid()}"
    other = tmp_path / f".other.kdcache.tmp{_dead_pid()}"
    for p in (dead, live, other):
        p.write_bytes(b"half a cache")
    lines = []
    cache = built(log=lines.append)
    assert not dead.exists() and live.exists() and other.exists()
    assert any(dead.name in line and "process is gone" in line for line in lines)
    view_lines = [line for line in lines if line.startswith("view ")]
    assert [line.split(":")[0] for line in view_lines] == [f"view {v}/{K}" for v in range(1, K + 1)]
    assert "img/s" in view_lines[-1] and "~0.0 min left" in view_lines[-1]
    assert cache.views == K
    assert remove_dead_temp_files(cache.path) == []  # the finished build left nothing behind


def test_kdcache_stats_script_reads_what_the_cache_teaches(built, toy_set, augment, teacher):
    import runpy
    from pathlib import Path

    stats = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "kdcache_stats.py"))["cache_stats"]
    cache = built()
    mean, std = augment.cfg.norm_stats()
    want, conf = [], []
    for v in range(K):  # the plain math: the online teacher on each replayed view
        idx = torch.arange(len(toy_set))
        p = teacher.predict(augment(toy_set.images, idx, torch.full_like(idx, v)), mean, std).softmax(-1)
        want.append(100.0 * float((p.argmax(-1) == toy_set.labels).float().mean()))
        conf.append(float(p.max(-1).values.mean()))
    got = stats(cache, toy_set.labels, batch=7)  # batches that do not divide the set
    assert got["views"] == K and got["images"] == len(toy_set)
    assert got["top1_per_view"] == pytest.approx(want, abs=0.01 + 100.0 / len(toy_set))  # fp16 may flip a tie
    assert got["mean_top_prob"] == pytest.approx(sum(conf) / K, abs=2e-3)
    with pytest.raises(ValueError, match="pass the config the cache was built with"):
        stats(cache, toy_set.labels[:5])
