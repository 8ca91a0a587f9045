"""Engine test fixtures (helpers live in engine_helpers.py)."""
import pytest

from engine_helpers import TINY


@pytest.fixture(scope="session")
def tiny_sets():
    """(train, val) slices of real Fashion-MNIST at 16 px, as the engine would subset them."""
    from ghostnetv3.data import load_dataset
    from ghostnetv3.engine.splits import subset

    tr = load_dataset("fashion-mnist", "train", seed=TINY["seed"], image_size=TINY["img_size"])
    va = load_dataset("fashion-mnist", "val", seed=TINY["seed"], image_size=TINY["img_size"])
    return subset(tr, TINY["train_subset"], TINY["seed"]), subset(va, TINY["val_subset"], TINY["seed"] + 1)
