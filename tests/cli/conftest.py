"""One tiny run trained through the command line, shared by the CLI tests."""
import pytest

from cli_helpers import TINY_TRAIN, cli


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run_dir, the train command's CompletedProcess)."""
    out = tmp_path_factory.mktemp("cli")
    r = cli("train", *TINY_TRAIN, "--output", out, "--experiment", "run")
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "run", r


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Three Fashion-MNIST validation images as PNG files, and their labels."""
    from PIL import Image

    from ghostnetv3.data import load_dataset

    ds = load_dataset("fashion-mnist", "val")
    d = tmp_path_factory.mktemp("img")
    paths = []
    for i in range(3):
        p = d / f"img{i}.png"
        Image.fromarray(ds.images[i, 0].numpy()).save(p)
        paths.append(p)
    return paths, [ds.classes[int(y)] for y in ds.labels[:3]]
