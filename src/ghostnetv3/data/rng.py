"""Counter-based random numbers: a pure function of (seed, sample index, key, stream).

Augmentation parameters must be replayable (exact resume, and the teacher-output cache
re-creating view v of sample i), so they come from hashing counters rather than from a
stateful generator. The hash is splitmix64's finalizer done in torch int64 ops, which wrap
like uint64 and whose arithmetic shifts we mask into logical ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["counter_uniform", "counter_normal", "counter_bits", "mix64"]

MASK64 = (1 << 64) - 1


def _i64(x: int) -> int:
    """Python int -> the int64 with the same low 64 bits."""
    x &= MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)
_K_INDEX = _i64(0xD1B54A32D192ED03)
_K_KEY = _i64(0x8CB92BA72F3D8DD7)
_K_STREAM = _i64(0xA24BAED4963EE407)


def _shr(x: Tensor, s: int) -> Tensor:
    # logical right shift of int64: arithmetic shift, then clear the sign-extended bits
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64 finalizer on an int64 tensor (bijective, good avalanche)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def counter_bits(seed: int, index: Tensor, key: Tensor | int, stream: int, n: int) -> Tensor:
    """Raw 64-bit hashes, int64 [len(index), n], a pure function of the arguments (the bits behind
    `counter_uniform`; e.g. a seed per sample)."""
    index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
    key = torch.as_tensor(key, dtype=torch.int64, device=index.device).expand_as(index)
    h = mix64(torch.full_like(index, _i64(seed * _GOLDEN + 0x632BE59BD9B4E019)))
    h = mix64(h ^ (index * _K_INDEX))
    h = mix64(h ^ (key * _K_KEY))
    h = mix64(h ^ _i64(stream * _K_STREAM))
    j = torch.arange(1, n + 1, dtype=torch.int64, device=index.device) * _GOLDEN
    return mix64(h[:, None] + j[None, :])


def counter_uniform(seed: int, index: Tensor, key: Tensor | int, stream: int, n: int) -> Tensor:
    """Uniform floats in [0, 1), float32 [len(index), n], a pure function of the arguments.

    `key` is a scalar or one int per index (e.g. the epoch, or a view id); `stream` separates
    independent uses (crop, flip, jitter...) so adding one never shifts the others.
    """
    bits = _shr(counter_bits(seed, index, key, stream, n), 40)  # top 24 bits: exact in float32
    return bits.to(torch.float32) * (1.0 / (1 << 24))


def counter_normal(seed: int, index: Tensor, key: Tensor | int, stream: int, n: int) -> Tensor:
    """Standard normal floats [len(index), n] (Box-Muller on two counter streams)."""
    u1 = counter_uniform(seed, index, key, stream, n)
    u2 = counter_uniform(seed, index, key, stream ^ 0x5A5A5A5A, n)
    r = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 in (0, 1]: log is finite
    return r * torch.cos((2.0 * torch.pi) * u2)
