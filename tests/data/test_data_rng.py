import torch

from ghostnetv3.data import counter_normal, counter_uniform
from ghostnetv3.data.rng import MASK64, counter_bits

M = MASK64


def _ref_mix(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
    return x ^ (x >> 31)


def _ref_uniform(seed, index, key, stream, n):
    """Pure-Python uint64 reference of the torch int64 implementation."""
    h = _ref_mix((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & M)
    h = _ref_mix(h ^ ((index * 0xD1B54A32D192ED03) & M))
    h = _ref_mix(h ^ ((key * 0x8CB92BA72F3D8DD7) & M))
    h = _ref_mix(h ^ ((stream * 0xA24BAED4963EE407) & M))
    return [(_ref_mix((h + j * 0x9E3779B97F4A7C15) & M) >> 40) / 2**24 for j in range(1, n + 1)]


def test_matches_uint64_reference():
    idx = torch.tensor([0, 1, 7, 123456789, 2**40 + 3])
    got = counter_uniform(42, idx, 5, 3, 4)
    for row, i in zip(got.tolist(), idx.tolist()):
        assert row == _ref_uniform(42, i, 5, 3, 4)


def test_deterministic_and_in_range():
    idx = torch.arange(20000)
    a = counter_uniform(7, idx, 3, 1, 8)
    assert a.shape == (20000, 8) and a.dtype == torch.float32
    assert torch.equal(a, counter_uniform(7, idx, 3, 1, 8))
    assert a.min() >= 0 and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.01 and abs(a.var().item() - 1 / 12) < 0.005
    # a row depends only on its own (index, key): order and batch composition do not matter
    perm = torch.randperm(20000)
    assert torch.equal(counter_uniform(7, idx[perm], 3, 1, 8), a[perm])


def test_every_input_changes_the_output():
    idx = torch.arange(1000)
    base = counter_uniform(0, idx, 0, 0, 4)
    for other in (counter_uniform(1, idx, 0, 0, 4), counter_uniform(0, idx, 1, 0, 4),
                  counter_uniform(0, idx, 0, 1, 4), counter_uniform(0, idx + 1, 0, 0, 4)):
        assert (other != base).float().mean() > 0.99
    # per-sample keys: a tensor key equals the scalar key row by row
    keys = torch.arange(1000) % 3
    mixed = counter_uniform(0, idx, keys, 0, 4)
    for k in range(3):
        sel = keys == k
        assert torch.equal(mixed[sel], counter_uniform(0, idx[sel], k, 0, 4))


def test_normal_moments():
    z = counter_normal(0, torch.arange(50000), 0, 9, 2)
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


def test_counter_bits_are_the_bits_behind_counter_uniform():
    idx = torch.tensor([0, 3, 2**33 + 1])
    bits = counter_bits(7, idx, torch.tensor([1, 2, 3]), 9, 5)
    assert bits.dtype == torch.int64 and bits.shape == (3, 5)
    assert torch.equal(bits, counter_bits(7, idx, torch.tensor([1, 2, 3]), 9, 5))  # a pure function
    top24 = [[((b & M) >> 40) / 2**24 for b in row] for row in bits.tolist()]
    assert top24 == counter_uniform(7, idx, torch.tensor([1, 2, 3]), 9, 5).tolist()
    assert not torch.equal(bits, counter_bits(7, idx, torch.tensor([1, 2, 3]), 10, 5))  # streams differ
