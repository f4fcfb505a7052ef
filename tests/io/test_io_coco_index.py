"""Dataset lookups are built once, not per access: the structural guard of linear per-image loops (issue #18).

Timing a loop would be flaky on shared machines; counting index rebuilds is not. A stage that reads
``image_index`` once or three times per image must build it once per dataset, whatever the image count.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from wsis_cli.io.coco import Dataset


def _dataset(n: int) -> Dataset:
    images = [{"id": 100 + i, "file_name": f"{i}.png", "height": 8, "width": 12} for i in range(n)]
    return Dataset(images, [], [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}])


def test_image_index_is_built_once_for_any_number_of_reads():
    for n in (10, 1000):
        ds = _dataset(n)
        for im in ds.images:
            for _ in range(3):  # irnet reads it three times per image
                assert ds.image_index[im["id"]] is im
        assert ds.category_ids == [1, 3]
        assert ds.index_builds == 2  # one image index and one category list, independent of n


def test_index_follows_mutation_of_the_lists():
    ds = _dataset(3)
    assert 103 not in ds.image_index
    ds.images.append({"id": 103, "file_name": "x.png", "height": 8, "width": 12})
    assert ds.image_index[103]["file_name"] == "x.png"
    ds.images.pop(0)
    assert 100 not in ds.image_index
    ds.images = [{"id": 7, "file_name": "y.png", "height": 8, "width": 12}]
    assert list(ds.image_index) == [7]
    ds.images[0] = {"id": 8, "file_name": "z.png", "height": 8, "width": 12}  # same list, same length
    ds.invalidate_indices()
    assert list(ds.image_index) == [8]
    ds.categories.append({"id": 9, "name": "c"})
    assert ds.category_ids == [1, 3, 9]


def test_dataset_equality_ignores_the_caches():
    a, b = _dataset(4), _dataset(4)
    _ = a.image_index
    assert a == b


def test_irnet_per_image_reads_build_the_index_once(monkeypatch):
    """irnet's per-image helpers (CAM check, image loader) on 500 images: one index build in all."""
    from wsis_cli.stages.irnet import stage as irnet

    n = 500
    ds = _dataset(n)

    class Reader:
        path = "cams.h5"

        def get(self, image_id, names, dtype):
            return {"cams": np.zeros((1, 2, 3), dtype)}

        def dataset_attrs(self, image_id, name):
            return {"category_ids": [1], "stride": 4}

    inputs = irnet.Inputs(Reader(), ds, [im["id"] for im in ds.images], None)
    monkeypatch.setattr("wsis_cli.io.images.load_image_for", lambda images, rec, source: SimpleNamespace(rec=rec))
    for image_id in inputs.ids:
        rec = inputs.dataset.image_index[image_id]
        irnet.image_cams(inputs, image_id)
        assert irnet._loader(inputs, None, image_id)().rec is rec
    assert ds.index_builds == 2
