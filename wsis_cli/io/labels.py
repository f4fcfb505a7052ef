"""Image-level label files in either COCO form, as a :class:`~wsis_cli.io.coco.Dataset`.

A *dataset* is used as it is. A *results list* (``[{"image_id", "category_id", ...}]``) names no image
files, so its image ids refer to the images folder the way ``wsis`` numbers a bare folder: ids 1..N in
sorted file-name order (see :func:`wsis_cli.io.images.folder_images`). Its categories are the ids it uses.
"""

from __future__ import annotations

import os

from wsis_cli.io import coco
from wsis_cli.runtime.errors import BadInputError


def load_labels(path: str | os.PathLike, images: str | os.PathLike | None) -> coco.Dataset:
    """Load image-level labels from a dataset or a results list (whose image ids number ``images``)."""
    loaded = coco.load_coco(path)
    if isinstance(loaded, coco.Dataset):
        return loaded
    name = str(path) if str(path) != "-" else "<stdin>"
    if images is None:
        raise BadInputError(name, None, "a results list names no image files: give --images, whose images it "
                            "numbers 1..N in sorted file-name order")
    from wsis_cli.io.images import folder_images

    records = folder_images(images)
    known = {im["id"] for im in records}
    for i, r in enumerate(loaded):
        if r["image_id"] not in known:
            raise BadInputError(name, f"results[{i}]", f"image_id {r['image_id']} is not one of the {len(records)} "
                                f"images of {images} (numbered 1..{len(records)} in sorted file-name order)")
    annotations = [{**r, "id": n} for n, r in enumerate(loaded, start=1)]
    categories = [{"id": c, "name": str(c)} for c in sorted({r["category_id"] for r in loaded})]
    return coco.Dataset(records, annotations, categories, {}, name)
