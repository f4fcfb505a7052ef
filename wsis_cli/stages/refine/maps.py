"""``wsis refine-crf MAPS.h5``: refine per-class score maps (CAMs) as an L-label mean-field CRF.

Each image's K class maps (stride ``s``, values in [0, 1]) are upsampled to the image, a constant
background score ``bg_score`` is put in front (IRNet's ``cam_eval_thres`` idea: a pixel is background
unless some class scores above it), and the K+1 scores are normalised into label probabilities for
:func:`wsis_kernels.mean_field_crf`. The argmax of the normalised scores equals the thresholded CAM
labelling, so the CRF starts from exactly what the CAMs say and only moves labels where colour and
smoothness disagree. Output, per image, in an HDF5 store of stage ``refine-crf``:

- ``cams``: (K, h, w) float16, the refined class probabilities back at the input stride (area-averaged),
  with the input's dataset attributes (stride, category ids, image size);
- ``labels``: (H, W) int32 full-resolution labelling, the category id of each pixel and 0 for background.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsis_cli.stages.refine.settings import MapJob, MapSettings, MapStats, RefineSettings
from wsis_kernels.crf import crf_labels, mean_field_crf


def refine_maps(image: np.ndarray, cams: np.ndarray, settings: RefineSettings, bg_score: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine one image's class maps.

    Args:
        image: (H, W, 3) uint8 RGB.
        cams: (K, h, w) float scores in [0, 1] at any stride (upsampled bilinearly to H x W).
        bg_score: constant background score in (0, 1).

    Returns:
        ``(probs, labels)``: (K+1, H, W) float32 refined probabilities (background first) and (H, W) int64
        label indices (0 = background, k = class channel k-1).
    """
    h, w = image.shape[:2]
    img = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0
    k = cams.shape[0]
    if k == 0:
        return torch.ones(1, h, w, device=device), torch.zeros(h, w, dtype=torch.int64, device=device)
    maps = torch.from_numpy(np.asarray(cams, dtype=np.float32)).to(device)[None]
    maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    scores = torch.cat([torch.full((1, 1, h, w), bg_score, device=device), maps], dim=1)
    probs0 = scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-6)
    probs = mean_field_crf(img, probs0, None, settings.crf_params())
    return probs[0], crf_labels(probs)[0]


def _records(reader: Any, dataset: Any) -> dict[int, dict[str, Any]]:
    """Image records (id, file_name, height, width) for every image of the store."""
    by_id = dataset.image_index if dataset is not None else {}
    out = {}
    for image_id in reader.ids():
        attrs = reader.attrs(image_id)
        if image_id in by_id:
            out[image_id] = by_id[image_id]
        elif "file_name" in attrs:
            out[image_id] = {"id": image_id, "file_name": str(attrs["file_name"]),
                             "height": int(attrs["height"]), "width": int(attrs["width"])}
    return out


def run(settings: MapSettings, job: MapJob, progress: Any = None) -> MapStats:
    """Refine every image's maps in ``job.maps`` (this shard's) into ``job.out``; returns how many images
    the output holds."""
    from wsis_cli.io import coco
    from wsis_cli.io.h5 import H5Reader, H5Writer
    from wsis_cli.io.images import load_image_for
    from wsis_cli.runtime.device import resolve_device
    from wsis_cli.runtime.errors import BadInputError
    from wsis_cli.runtime.progress import NullProgress
    from wsis_cli.runtime.sharding import resolve_shard, shard_ids

    progress = progress or NullProgress()
    device = resolve_device(job.device)
    reader = H5Reader(job.maps)
    dataset = coco.load_dataset(job.dataset) if job.dataset else None
    source = job.dataset or job.maps
    records = _records(reader, dataset)
    shard = resolve_shard(job.shard)
    ids = shard_ids(reader.ids(), shard)
    missing = [i for i in ids if i not in records]
    if missing:
        raise BadInputError(job.maps, f"image id {missing[0]}", "no file name for this image in the store; "
                            "give the COCO file that lists the images with --dataset")
    settings_json = {**settings.to_json(), "shard": [shard.index, shard.count]}
    inputs = {"maps": str(job.maps), "maps_stage": reader.stage, "dataset": job.dataset}
    with H5Writer(job.out, "refine-crf", settings_json, inputs, resume=job.resume) as writer:
        progress.start(len(ids), "refine-crf")
        for image_id in ids:
            if writer.has(image_id):
                progress.advance(1)
                continue
            names = reader.names(image_id)
            if "cams" not in names:
                raise BadInputError(job.maps, f"image id {image_id}", f"no 'cams' dataset (has {names})")
            cams = reader.get(image_id, ["cams"], dtype=np.float32)["cams"]
            meta = reader.dataset_attrs(image_id, "cams")
            if cams.ndim != 3 or len(meta.get("category_ids", [])) != cams.shape[0]:
                raise BadInputError(job.maps, f"image id {image_id}",
                                    f"'cams' must be (K, h, w) with K category ids, got {cams.shape}")
            image = load_image_for(job.images, records[image_id], source)
            probs, labels = refine_maps(image, cams, settings, settings.bg_score, device)
            h, w = cams.shape[1:]
            if cams.shape[0]:
                small = F.adaptive_avg_pool2d(probs[1:][None], (h, w))[0].cpu().numpy()
            else:
                small = np.zeros((0, h, w), np.float32)
            cats = np.asarray([0, *[int(c) for c in meta.get("category_ids", [])]], dtype=np.int32)
            writer.put(image_id, {"cams": small, "labels": cats[labels.cpu().numpy()]},
                       attrs=reader.attrs(image_id), dataset_attrs={"cams": meta},
                       dtypes={"cams": np.float16})
            progress.advance(1)
        progress.finish()
    return MapStats(len(ids))
