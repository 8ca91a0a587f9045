"""A teacher shared by plans (`teacher: {shared: true}`): the 60k grid and the 20k grid with its teacher
train one teacher, in a folder named by its config, and the older plans keep theirs where it was."""
from pathlib import Path

from ghostnetv3.ablate.plan import load_plan
from ghostnetv3.ablate.runner import Runner

REPO = Path(__file__).resolve().parents[2]


def _runner(name, tmp_path):
    return Runner(load_plan(REPO / "recipes" / name, output=str(tmp_path)))


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
