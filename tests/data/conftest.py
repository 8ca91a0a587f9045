import os
from pathlib import Path

import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _have_fmnist() -> bool:
    d = os.environ.get("GHOSTNETV3_DATA_DIR")
    dirs = [FMNIST] + ([Path(d), Path(d) / "fashion-mnist"] if d else [])
    return any((p / "train-images-idx3-ubyte.gz").is_file() for p in dirs)


@pytest.fixture(scope="session")
def fmnist_small():
    """The first 512 Fashion-MNIST training images."""
    if not _have_fmnist():
        pytest.fail("Fashion-MNIST is missing: run `make data` (or `sudo apt-get install dataset-fashion-mnist`)")
    from ghostnetv3.data import load_dataset

    return load_dataset("fashion-mnist", "train").subset(range(512), "fmnist-512")
