import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Decoded-dataset caches go to a temp dir, so tests neither read nor leave stale files."""
    old = os.environ.get("GHOSTNETV3_CACHE_DIR")
    os.environ["GHOSTNETV3_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("GHOSTNETV3_CACHE_DIR", None)
    else:
        os.environ["GHOSTNETV3_CACHE_DIR"] = old


def randomize_bn_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so fusion bugs cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_buffers()) + list(model.named_parameters()):
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bn_weight", "bn1.weight")) or ".bn" in name and name.endswith("weight") and t.dim() <= 2:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bn_bias", "bn1.bias")) or ".bn" in name and name.endswith("bias") and t.dim() <= 2:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


@pytest.fixture
def bn_randomizer():
    return randomize_bn_stats
