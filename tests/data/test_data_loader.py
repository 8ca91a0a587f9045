import pytest
import torch

from ghostnetv3.data import AugConfig, BatchAugment, ImageSet, InMemoryLoader, make_loaders


@pytest.fixture(scope="module")
def small():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (103, 1, 12, 12), generator=g, dtype=torch.uint8)
    return ImageSet(x, torch.arange(103) % 5, [str(i) for i in range(5)], "random-103")


def _loader(ds, **kw):
    args = dict(shuffle=True, drop_last=False, seed=3)
    args.update(kw)
    return InMemoryLoader(ds, 16, BatchAugment(AugConfig(16, reprob=0.3), seed=3), **args)


@pytest.mark.parametrize("prefetch", [False, True])
def test_iter_from_equals_tail_of_full_epoch(small, prefetch):
    loader = _loader(small, prefetch=prefetch)
    loader.set_epoch(2)
    full = list(loader)
    assert len(full) == len(loader) == 7
    for k in (0, 3, 6, 7):
        tail = list(loader.iter_from(k))
        assert len(tail) == len(full) - k
        for a, b in zip(tail, full[k:]):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.indices, b.indices) and torch.equal(a.keys, b.keys)
    # a fresh loader (a resumed process) gives the same batches
    again = _loader(small, prefetch=prefetch)
    again.set_epoch(2)
    assert torch.equal(next(iter(again.iter_from(4))).images, full[4].images)


def test_epochs_differ_and_cover_the_data(small):
    loader = _loader(small)
    loader.set_epoch(0)
    e0 = torch.cat([b.indices for b in loader])
    assert sorted(e0.tolist()) == list(range(103))
    loader.set_epoch(1)
    e1 = torch.cat([b.indices for b in loader])
    assert not torch.equal(e0, e1)
    b = next(iter(loader))
    assert (b.keys == 1).all() and torch.equal(b.labels, small.labels[b.indices])


@pytest.mark.parametrize("drop_last", [False, True])
def test_ddp_ranks_partition_an_epoch(small, drop_last):
    ws = 4
    loaders = [_loader(small, rank=r, world_size=ws, drop_last=drop_last) for r in range(ws)]
    seen = []
    for ld in loaders:
        ld.set_epoch(5)
        idx = torch.cat([b.indices for b in ld])
        seen.append(idx)
    assert len({len(s) for s in seen}) == 1 and len({len(ld) for ld in loaders}) == 1
    allidx = torch.cat(seen).tolist()
    if drop_last:  # 103 // 4 = 25 per rank, 16-sample batches: 1 batch each, no repeats
        assert len(loaders[0]) == 1 and len(set(allidx)) == len(allidx) == 64
    else:  # 26 per rank: padded with 1 repeat, every sample present
        assert set(allidx) == set(range(103)) and len(allidx) == 104
    # the ranks together take the single-process permutation
    one = _loader(small, drop_last=drop_last)
    one.set_epoch(5)
    perm = one.rank_indices()
    assert torch.equal(loaders[1].rank_indices(), torch.cat([perm, perm])[1:104:4][: loaders[1].num_samples])


def test_view_fn_replays_views(small):
    views = lambda idx, epoch: (idx * 7 + epoch) % 3  # noqa: E731
    loader = _loader(small, view_fn=views)
    got = {}
    for epoch in range(4):
        loader.set_epoch(epoch)
        for b in loader:
            for img, i, k in zip(b.images, b.indices.tolist(), b.keys.tolist()):
                assert k == (i * 7 + epoch) % 3
                if (i, k) in got:
                    assert torch.equal(got[(i, k)], img)
                got[(i, k)] = img
    assert len(got) > 103  # several views per sample were seen


def test_unshuffled_eval_order_and_channels_last(small):
    train, val = make_loaders(small, small, 32, 16, seed=0, channels_last=True)
    idx = torch.cat([b.indices for b in val])
    assert torch.equal(idx, torch.arange(103))
    b = next(iter(train))
    assert b.images.shape == (32, 3, 16, 16) and b.images.is_contiguous(memory_format=torch.channels_last)
    assert len(train) == 103 // 32


def test_fashion_mnist_slice_batches(fmnist_small):
    loader = InMemoryLoader(fmnist_small, 128, BatchAugment(AugConfig(32, crop_mode="pad_crop")),
                            shuffle=True, drop_last=True)
    batches = list(loader)
    assert len(batches) == 4
    assert batches[0].images.shape == (128, 3, 32, 32) and batches[0].images.dtype == torch.float32
    assert torch.isfinite(batches[0].images).all()


def test_no_augment_yields_raw_uint8(small):
    loader = InMemoryLoader(small, 10, None, shuffle=False, drop_last=True)
    b = next(iter(loader))
    assert b.images.dtype == torch.uint8 and torch.equal(b.images, small.images[:10])
