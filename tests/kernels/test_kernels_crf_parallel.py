"""The CPU CRF's band threads: same result whatever the thread count, and the caller's settings untouched."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from wsis_kernels import CRFParams, mean_field_crf
from wsis_kernels.crf import incremental, parallel


def inputs(labels: int, height: int, width: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    region = (torch.rand(1, 1, height // 8, width // 8, generator=gen) * labels).floor()
    region = F.interpolate(region, size=(height, width), mode="nearest")[:, 0].long()
    image = torch.rand(labels, 3, generator=gen)[region].permute(0, 3, 1, 2)
    image = image + 0.05 * torch.randn(image.shape, generator=gen)
    logits = 3.0 * F.one_hot(region, labels).permute(0, 3, 1, 2).float()
    return image, torch.softmax(logits + torch.randn(logits.shape, generator=gen), dim=1)


@pytest.fixture
def threads():
    keep = torch.get_num_threads()
    yield
    torch.set_num_threads(keep)


@pytest.mark.parametrize(
    ("labels", "size", "params"),
    [
        (21, (150, 70), CRFParams(iterations=4)),  # incremental loop: bands, row pieces, sparse steps
        (21, (96, 41), CRFParams(iterations=3, sparse_eps=0.0, kernel_size=3, include_centre=True)),  # dense
        (2, (140, 130), CRFParams(iterations=3, sparse_eps=0.0)),  # foreground-only loop: torch's own threads
    ],
)
@pytest.mark.parametrize("sparse", [False, True], ids=["as-dispatched", "sparse"])
def test_result_does_not_depend_on_the_thread_count(reference_backend, threads, monkeypatch, labels, size, params,
                                                    sparse):
    if sparse:  # value-by-value propagation from the first change on (changes located in row pieces)
        monkeypatch.setattr(incremental, "SPARSE_VALUES", 1.0)
        monkeypatch.setattr(incremental, "GATHER_PIXELS", 0.5)
    image, probs = inputs(labels, *size)
    results = []
    for count in (1, 2, 3):
        torch.set_num_threads(count)
        results.append(mean_field_crf(image, probs, None, params))
        assert torch.get_num_threads() == count  # the caller's setting is back
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_threads_started_later_keep_the_default(reference_backend, threads):
    torch.set_num_threads(2)
    image, probs = inputs(21, 100, 64)
    mean_field_crf(image, probs, None, CRFParams(iterations=2))
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert seen == [2]


def test_a_failing_band_raises_in_the_caller(threads):
    torch.set_num_threads(2)

    def body(worker, y0, y1):
        if y0 == 32:
            raise ValueError("band 32")

    with parallel.own_ops_single_threaded(), pytest.raises(ValueError, match="band 32"):
        parallel.run(parallel.ranges(0, 128, 16), body)
    assert torch.get_num_threads() == 2


def test_bands_cover_the_rows_once(threads):
    torch.set_num_threads(2)
    seen = []
    with parallel.own_ops_single_threaded():
        parallel.run(parallel.ranges(3, 100, 7), lambda worker, y0, y1: seen.append((y0, y1)))
    assert sorted(seen) == parallel.ranges(3, 100, 7) and seen[0][0] == 3 and max(y1 for _, y1 in seen) == 100


def test_two_threads_really_share_the_bands(threads):
    """The invariance tests above would pass with every band run inline; here the caller's first band waits
    until another thread has taken one, which never happens unless the pool runs bands beside it."""
    torch.set_num_threads(2)
    other = threading.Event()
    workers = set()

    def body(worker, y0, y1):
        workers.add(worker)
        if worker == 0:
            other.wait(timeout=30)
        else:
            other.set()

    with parallel.own_ops_single_threaded():
        assert parallel.workers(8) == 2
        parallel.run(parallel.ranges(0, 64, 8), body)
    assert workers == {0, 1}
