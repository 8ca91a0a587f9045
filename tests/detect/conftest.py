import pytest

from ghostnetv3.detect import build_fashion_detection

from det_helpers import CANVAS, det_config


@pytest.fixture(scope="session")
def det_sets():
    return build_fashion_detection("train", 48, CANVAS, seed=0), build_fashion_detection("val", 12, CANVAS, seed=0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, det_sets):
    """A 2-epoch detection run through the engine (shared by the eval/export/CLI tests)."""
    from ghostnetv3.detect import DetectionTask
    from ghostnetv3.engine.train import train

    out = tmp_path_factory.mktemp("det")
    summary = train(det_config(out), train_set=det_sets[0], val_set=det_sets[1], task=DetectionTask())
    return out / "run", summary
