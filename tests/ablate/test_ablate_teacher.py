"""A teacher shared by plans (`teacher: {shared: true}`): the 60k grid and the 20k grid with its teacher
train one teacher, in a folder named by its config, and the older plans keep theirs where it was."""
import json
from pathlib import Path
from types import SimpleNamespace

from ghostnetv3.ablate import runner as runner_mod
from ghostnetv3.ablate.budget import collect
from ghostnetv3.ablate.budget import to_markdown as budget_markdown
from ghostnetv3.ablate.plan import load_plan
from ghostnetv3.ablate.report import write_report
from ghostnetv3.ablate.runner import RESULT, Runner

REPO = Path(__file__).resolve().parents[2]


def _runner(name, tmp_path, **kw):
    return Runner(load_plan(REPO / "recipes" / name, output=str(tmp_path), **kw))


def test_plans_with_the_same_shared_teacher_train_it_once(tmp_path):
    a, b = _runner("ablation_fashion_mnist_60k.yaml", tmp_path), _runner("ablation_fashion_mnist_20k_t60k.yaml", tmp_path)
    assert a.teacher_dir == b.teacher_dir
    assert a.teacher_dir.parent == tmp_path / "_teachers" and a.teacher_dir.name.startswith("tf_efficientnet_lite0-")
    assert a.teacher_config().init_checkpoint == b.teacher_config().init_checkpoint
    assert a.teacher_config().train_subset is None  # all 60k images, whatever the student's budget
    assert b.plan.config(b.plan.arms[0], 0).train_subset == 20000
    # a changed teacher is another folder, never the old one retrained in place
    b.plan.teacher["set"] = dict(b.plan.teacher["set"], epochs=1)
    assert b.teacher_dir != a.teacher_dir


def test_unshared_and_absent_teachers_stay_in_the_plans_folder(tmp_path):
    old = _runner("ablation_fashion_mnist_20k.yaml", tmp_path)
    assert old.teacher_dir == old.root / "teacher"
    none = _runner("ablation_fashion_mnist_long.yaml", tmp_path)
    assert none.plan.teacher is None and none.teacher_dir == none.root / "teacher"


def test_reports_name_the_teachers_score_through_the_students_view(tmp_path, monkeypatch):
    """cache-teacher records the teacher's top-1 on the student's (smaller) eval view; the plan's report
    and the budget chart show it beside the teacher's own score: it is what the students are taught."""
    r = _runner("ablation_fashion_mnist_60k.yaml", tmp_path / "runs", results_dir=str(tmp_path / "res"))
    r.teacher_dir.mkdir(parents=True)
    (r.teacher_dir / RESULT).write_text(json.dumps({"model": "tf_efficientnet_lite0", "top1": 93.42}))
    assert "student_view_top1" not in r.results()["teacher"]  # no cache yet: nothing claimed
    r.cache_path(1).parent.mkdir(parents=True)
    r.cache_path(1).write_bytes(b"")  # seed 0 has none; seed 1's is read
    scored = {"top1": 92.55, "n": 10000, "student_img_size": 32, "teacher_input_size": 96}
    seen = []
    monkeypatch.setattr(runner_mod, "TeacherCache",
                        lambda p: seen.append(p) or SimpleNamespace(header={"extra": {"teacher_val": scored}}))
    res = r.results()
    assert seen == [r.cache_path(1)]
    assert res["teacher"] == {"model": "tf_efficientnet_lite0", "top1": 93.42, "student_view_top1": 92.55,
                              "student_img_size": 32, "teacher_input_size": 96}
    paths = write_report(r.plan, res)
    assert ("- teacher (KD arms): tf_efficientnet_lite0, top-1 93.42; through the students' eval view (32 px "
            "resized to its 96), which is what the cache holds: top-1 92.55") in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["teacher"]["student_view_top1"] == 92.55
    # a damaged cache: the report does without the number rather than failing
    monkeypatch.setattr(runner_mod, "TeacherCache", lambda p: (_ for _ in ()).throw(ValueError("truncated")))
    assert "student_view_top1" not in r.results()["teacher"]
