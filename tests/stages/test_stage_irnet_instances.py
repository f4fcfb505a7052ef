"""Instance synthesis of IRNet: centroids from a displacement field, clusters, fragments and scores."""

from __future__ import annotations

import numpy as np
import torch

from wsis_cli.stages.irnet.instances import (
    argmax_with_background,
    centroid_candidates,
    cluster_centroids,
    detect_instances,
    instance_cams,
    instance_map,
    refine_centroids,
    split_by_cam_peaks,
    synthesize,
    upsample_scores,
)


def _squares_field(h: int, w: int, box_a: tuple[slice, slice], box_b: tuple[slice, slice]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (2, h, w) field where every pixel of two squares points at its square's centre (zero elsewhere)."""
    disp = np.zeros((2, h, w), np.float32)
    a = np.zeros((h, w), bool)
    b = np.zeros((h, w), bool)
    a[box_a] = True
    b[box_b] = True
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for m in (a, b):
        disp[0][m] = ys[m].mean() - ys[m]
        disp[1][m] = xs[m].mean() - xs[m]
    return disp, a, b


def two_touching_squares() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (2, 20, 30) field: every pixel of each of two touching 10x10 squares points at its square's centre."""
    return _squares_field(20, 30, np.s_[5:15, 5:15], np.s_[5:15, 15:25])


def test_centroids_converge_and_clusters_split_touching_squares() -> None:
    disp, a, b = two_touching_squares()
    cent = refine_centroids(disp, 300)
    assert cent.shape == (2, 20, 30) and cent.dtype == np.int64
    assert np.all(np.abs(cent[0][a] - 9.5) <= 0.5) and np.all(np.abs(cent[1][a] - 9.5) <= 0.5)
    inst = cluster_centroids(cent, disp, 2.5)
    ia, ib = inst[:, a].argmax(0), inst[:, b].argmax(0)
    assert len(set(ia.tolist())) == 1 and len(set(ib.tolist())) == 1 and ia[0] != ib[0]
    assert inst.sum(0).max() == 1  # one-hot


def test_refinement_interpolates_bilinearly_and_clips() -> None:
    disp = np.zeros((2, 5, 5), np.float32)
    disp[1] = 0.25  # everyone drifts right by a quarter pixel per step
    cent = refine_centroids(disp, 3)
    assert np.all(cent[1][:, :4] == np.arange(1, 5)) and np.all(cent[1][:, 4] == 4)  # 0.75 rounds up, clipped
    disp[1] = 100.0
    assert np.all(refine_centroids(disp, 2)[1] == 4)


def test_detect_instances_fragments_and_scores() -> None:
    labels = np.full((20, 20), -1)
    labels[0:5, 0:5] = 0  # 25 px
    labels[10:20, 10:20] = 0  # 100 px, same channel, another fragment
    labels[0, 19] = 1  # 1 px: under 1% of 400 px
    scores = np.zeros((2, 20, 20), np.float32)
    scores[0, 2, 2] = 0.7
    scores[0, 15, 15] = 0.9
    scores[1, 0, 19] = 1.0
    dets = detect_instances(scores, labels, [3, 5], 0.01)
    got = sorted((d.channel, int(d.mask.sum()), round(d.score, 3)) for d in dets)
    assert got == [(3, 25, 0.7), (3, 100, 0.9), (5, 1, 0.0)]


def test_instance_cams_order_and_upsampling() -> None:
    cams = np.stack([np.full((4, 4), 0.5), np.full((4, 4), 1.0)]).astype(np.float32)
    inst = np.zeros((3, 4, 4), bool)
    inst[0, :2], inst[1, 2:], inst[2] = True, True, False
    out = instance_cams(cams, inst)
    assert out.shape == (6, 4, 4)
    assert out[1, 3, 0] == 0.5 and out[3, 0, 0] == 1.0 and out[5].sum() == 0  # class-major
    up = upsample_scores(torch.from_numpy(out), 15, 14)
    assert up.shape == (6, 15, 14) and float(up.max()) == 1.0
    lab = argmax_with_background(up, 0.6)
    assert lab[0, 0] == 3 and lab[14, 0] == 4


def test_synthesize_separates_touching_instances() -> None:
    disp, a, b = two_touching_squares()
    union = a | b
    cams = union.astype(np.float32)[None]
    ring = np.zeros_like(union)  # background pixels next to the objects: the class boundary
    ring[4:16, 4:26] = True
    edge = torch.from_numpy((ring & ~union).astype(np.float32))
    dets = synthesize(cams, edge, disp, 80, 120, steps=16)
    big = [d for d in dets if d.score > 0]
    assert len(big) == 2 and all(d.channel == 0 for d in big)
    areas = sorted(int(d.mask.sum()) for d in big)
    assert 1200 <= areas[0] <= 2000 and 1200 <= areas[1] <= 2000  # each ~ a 40x40 square
    assert not (big[0].mask & big[1].mask).any()


def small_touching_squares() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two touching 4x4 squares in a (2, 16, 24) field on a background of zero displacement: objects
    smaller than the paper's 2.5-cell candidate radius (16 px squares at stride 4)."""
    return _squares_field(16, 24, np.s_[6:10, 8:12], np.s_[6:10, 12:16])


def test_sink_candidates_keep_small_objects_apart_from_the_background() -> None:
    disp, a, b = small_touching_squares()
    cent = refine_centroids(disp, 100)
    paper = instance_map(cent, disp, 2.5, divergence=None)
    # the paper's |D| < 2.5 joins both squares and the whole background into one candidate region
    assert len(np.unique(paper[a | b])) == 1 and paper[0, 0] == paper[a][0]
    sink = instance_map(cent, disp, 2.5)
    assert not centroid_candidates(disp)[0].any()  # flat background: not a sink
    ia, ib = np.unique(sink[a]), np.unique(sink[b])
    assert len(ia) == 1 and len(ib) == 1 and ia[0] > 0 and ib[0] > 0 and ia[0] != ib[0]
    assert sink[0, 0] == 0 and (sink[~(a | b)] == 0).all()
    masks = cluster_centroids(cent, disp, 2.5)
    assert masks.shape[0] == 3 and masks[0][0, 0]  # the no-centroid cluster comes first


def test_full_walk_keeps_touching_same_class_instances_apart() -> None:
    """A class boundary does not separate two touching instances of one class: 256 steps of upstream's walk
    spread both instance-wise CAMs over the pair; the instance map (``separate_instances``) stops that."""
    disp, a, b = two_touching_squares()
    union = a | b
    cams = np.where(a, 1.0, np.where(b, 0.6, 0.0)).astype(np.float32)[None]  # one instance scores higher
    ring = np.zeros_like(union)
    ring[4:16, 4:26] = True
    edge = torch.from_numpy((ring & ~union).astype(np.float32))

    def kept(**kw: object) -> list[int]:
        dets = synthesize(cams, edge, disp, 80, 120, **kw)
        return sorted(int(d.mask.sum()) for d in dets if d.score > 0)

    assert len(kept(separate_instances=False)) == 1  # merged into the stronger instance
    areas = kept()
    assert len(areas) == 2 and all(1200 <= x <= 2000 for x in areas)


def test_background_field_noise_is_not_followed() -> None:
    """A learnt field is noise on the background: followed for 300 steps it drifts; with the default
    ``field_cam_threshold`` the cells where no CAM reaches it keep a zero field."""
    disp, a, b = two_touching_squares()
    union = a | b
    cams = union.astype(np.float32)[None]
    edge = torch.zeros(union.shape)
    noisy = disp.copy()
    noisy[:, ~union] += np.float32(0.3)  # a slow drift down-right over the whole background
    gated = synthesize(cams, edge, noisy, 80, 120, steps=16)
    clean = synthesize(cams, edge, disp, 80, 120, steps=16, field_cam_threshold=0.0)
    assert [(d.channel, d.score) for d in gated] == [(d.channel, d.score) for d in clean]
    assert all((g.mask == c.mask).all() for g, c in zip(gated, clean, strict=True))
    followed = synthesize(cams, edge, noisy, 80, 120, steps=16, field_cam_threshold=0.0)  # upstream
    assert any((f.mask != c.mask).any() for f, c in zip(followed, clean, strict=True))


def _two_peaked_cam(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A ``(1, h, w)`` CAM over two touching squares, peaked at each square's centre (a saddle between)."""
    ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]].astype(np.float32)
    cam = np.zeros(a.shape, np.float32)
    for m in (a, b):
        d2 = (ys - ys[m].mean()) ** 2 + (xs - xs[m].mean()) ** 2
        cam = np.maximum(cam, np.exp(-d2 / 30.0) * m)
    return cam[None]


def test_split_by_cam_peaks() -> None:
    _, a, b = two_touching_squares()
    cam = _two_peaked_cam(a, b)
    merged = (a | b).astype(np.int64)  # a field that sent both squares to one centroid
    out = split_by_cam_peaks(merged, cam, 0.7)
    ia, ib = np.unique(out[a]), np.unique(out[b])
    assert len(ia) == 1 and len(ib) == 1 and ia[0] > 0 and ib[0] > 0 and ia[0] != ib[0]
    assert (out[~(a | b)] == 0).all()
    assert (split_by_cam_peaks(merged, (a | b).astype(np.float32)[None], 0.7)[a | b] == 1).all()  # one peak
    # cells with no centroid: left alone, or grouped by their peaks where the CAM reaches unassigned_cam
    assert (split_by_cam_peaks(np.zeros_like(merged), cam, 0.7) == 0).all()
    orphans = split_by_cam_peaks(np.zeros_like(merged), cam, 0.7, unassigned_cam=0.1)
    assert len(np.unique(orphans[a])) == 1 and np.unique(orphans[a])[0] != np.unique(orphans[b])[0]
    assert (orphans[cam[0] < 0.1] == 0).all()


def test_synthesize_splits_a_merged_instance_at_its_cam_peaks() -> None:
    """A learnt field often sends two touching instances of one class to one centroid (its relations are
    class-level); their CAM still peaks once in each: ``peak_split`` (default) splits them, 0 is upstream."""
    _, a, b = two_touching_squares()
    union = a | b
    ys, xs = np.mgrid[0:20, 0:30].astype(np.float32)
    disp = np.zeros((2, 20, 30), np.float32)
    disp[0][union], disp[1][union] = ys[union].mean() - ys[union], xs[union].mean() - xs[union]
    cam = _two_peaked_cam(a, b)
    ring = np.zeros_like(union)
    ring[4:16, 4:26] = True
    edge = torch.from_numpy((ring & ~union).astype(np.float32))

    def kept(**kw: object) -> list[int]:
        return sorted(int(d.mask.sum()) for d in synthesize(cam, edge, disp, 80, 120, steps=16, **kw) if d.score > 0)

    assert len(kept(peak_split=0.0)) == 1
    split = kept()
    assert len(split) == 2 and all(800 <= x <= 2000 for x in split), split
