"""Issue 15 item 12: a truncated .kdcache is refused with its file name (np.memmap alone said only
'mmap length is greater than file size')."""
from __future__ import annotations

import pytest

from ghostnetv3.distill.cache import TeacherCache, build_cache


@pytest.mark.parametrize("keep", ["header", "data"])
def test_truncated_cache_names_the_file(tmp_path, toy_set, augment, teacher, keep):
    cache = build_cache(teacher, toy_set, augment, 2, tmp_path / "t.kdcache", store="logits", batch_size=40,
                        progress=False)
    raw = cache.path.read_bytes()
    bad = tmp_path / "cut.kdcache"
    bad.write_bytes(raw[:20] if keep == "header" else raw[:len(raw) - 100])
    with pytest.raises(ValueError, match=rf"{bad} is truncated.*rebuild it with ghostnetv3 cache-teacher"):
        TeacherCache(bad)
