"""``wsis train-student``: train torchvision's Mask R-CNN on pseudo-labels (or ground truth) and predict.

Training (one run folder, :class:`wsis_cli.io.run_dir.RunDir`): SGD with momentum (or AdamW), a linear
warm-up then a cosine decay of the learning rate, ``accumulate`` micro-batches per optimizer step, AMP on
GPUs, data-parallel under ``torchrun``/``srun`` (only rank 0 writes), a checkpoint after every epoch and
per-epoch losses (and validation AP with ``val``) in ``metrics.jsonl``; the final ``model.pt`` holds the
weights, the :class:`~wsis_cli.models.student.StudentSpec` and the category ids.

Pre-emption: SIGTERM (SLURM pre-emption, ``scancel``, the time limit) or SIGUSR1 (``sbatch
--signal=B:USR1@120``) make the loop stop after the optimizer step in progress, save ``last.pt`` with the
position inside the epoch, and exit with code 143 (:data:`REQUEUE_EXIT`). A job script can requeue on
143 and rerun the same command with ``--resume``, which continues at the same step with the optimizer,
loss scaler and RNG states restored. A second signal stops at once.

Self-training (``rounds > 1``, FreeSOLO): after round r the model predicts on the training images; per
image the ``round_max`` best masks scoring ≥ ``round_score`` whose box is narrower than ``round_max_width``
of the image (FreeSOLO's filter against image-wide "objects") are the labels of round r+1, which trains
from the same initialisation. Round r keeps its own run folder ``RUN/round-r``; ``RUN/model.pt`` is the
last round's model.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from wsis_cli.io.coco import Dataset
from wsis_cli.io.run_dir import RunDir
from wsis_cli.models.student import build_student, set_loss_step
from wsis_cli.models.student_losses import ProjectionLossWeights
from wsis_cli.runtime.device import autocast, grad_scaler
from wsis_cli.runtime.distributed import DistContext
from wsis_cli.runtime.errors import BadInputError, ExitCode, Terminated
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.training import EpochBookkeeping, check_finite, set_lr, unwrap_model, warmup_cosine
from wsis_cli.stages.student.data import StudentData, collate, collect_instances, loader_worker_init
from wsis_cli.stages.student.demo import DEMO_EPOCHS, demo_settings
from wsis_cli.stages.student.predict import predict
from wsis_cli.stages.student.settings import STAGE, StudentJob, StudentSettings

log = get_logger("train-student")

REQUEUE_EXIT = int(ExitCode.TERMINATED)  # 143: "checkpoint saved, rerun with --resume"


@dataclass
class TrainResult:
    model: nn.Module
    model_path: Path
    category_ids: list[int]
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl records of this run


class StopSignals:
    """While active, SIGTERM and SIGUSR1 only *request* a stop (checked between optimizer steps).

    A second signal raises :class:`Terminated` at once. Outside the main thread (where Python cannot
    install handlers) this is inert.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if self.requested is not None:
            raise Terminated(signal.Signals(signum).name)
        self.requested = signum
        log.warning("received %s: stopping after the current step to save a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()


def check_categories(val: Dataset, category_ids: list[int]) -> None:
    known = set(category_ids)
    for i, a in enumerate(val.annotations):
        if a["category_id"] not in known:
            raise BadInputError(val.source, f"annotations[{i}] (id {a.get('id')})",
                                f"category {a['category_id']} is not a category of the training labels")


def load_init_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Start from another student's weights: every tensor whose name and shape match (new categories
    leave the class-specific predictor layers at their fresh initialisation)."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(usable) < 0.5 * len(own):
        raise BadInputError(source, None, f"only {len(usable)} of the model's {len(own)} tensors match: a model of "
                            "another architecture?")
    model.load_state_dict(usable, strict=False)
    log.info("--init-weights %s: %d of %d tensors loaded", source, len(usable), len(own))


def _loader(data: StudentData, indices: list[int], per_rank: int, workers: int, device: torch.device,
            seed: int) -> DataLoader:
    # its own generator: creating the iterator must not draw from the global RNG, or a resumed epoch
    # (whose iterator starts later) would sample other RoIs than the uninterrupted run
    return DataLoader(data, batch_size=per_rank, sampler=indices, num_workers=workers, collate_fn=collate,
                      worker_init_fn=loader_worker_init, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed))


def _to_device(images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
               device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return ([im.to(device, non_blocking=True) for im in images],
            [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])


def train(settings: StudentSettings, ds: Dataset, images_root: str | None, run: RunDir, ctx: DistContext, *,
          backbone_state: Any | None = None, init_state: Mapping[str, torch.Tensor] | None = None,
          init_source: str = "--init-weights", val_ds: Dataset | None = None) -> TrainResult:
    """Train one student on ``ds`` in the run folder ``run``; returns the model (eval mode) and its history.

    ``backbone_state`` is the raw ``--weights`` checkpoint (or ``None``); ``init_state`` a whole student's
    state dict (``--init-weights``). Raises :class:`Terminated` after saving a checkpoint when stopped
    by SIGTERM/SIGUSR1.
    """
    device = ctx.device
    category_ids = [int(c["id"]) for c in ds.categories]
    if val_ds is not None:
        check_categories(val_ds, category_ids)
    box_masks = settings.mask_loss == "projection"
    instances = collect_instances(ds, category_ids, box_masks=box_masks)
    n_inst = sum(len(v) for v in instances.values())
    if n_inst == 0:  # images alone teach only background: a model that never detects anything
        raise BadInputError(ds.source, None, f"no instance to train on ({len(ds.annotations)} annotation(s) on "
                            f"{len(ds.images)} image(s), none usable): train-student needs masks"
                            + (" or boxes" if box_masks else ""))
    frozen_bn = backbone_state is not None
    torch.manual_seed(settings.seed)
    weights = ProjectionLossWeights(pairwise_warmup=settings.pairwise_warmup)
    model, report = build_student(settings.spec(len(category_ids), frozen_bn), backbone_state,
                                  source=settings.weights, loss_weights=weights)
    if report is not None:
        log.info("--weights %s: %d of %d backbone tensors (prefix %r)", settings.weights, report.matched,
                 report.total, report.prefix)
    if init_state is not None:
        load_init_weights(model, init_state, init_source)
    model.to(device)

    data = StudentData(ds.images, instances, images_root, ds.source, with_lab=box_masks, flip=settings.flip,
                       seed=settings.seed)
    per_rank = max(1, math.ceil(settings.batch_size / ctx.world_size))
    sampler = ctx.sampler(data, shuffle=True, seed=settings.seed)
    batches_per_epoch = math.ceil(len(sampler) / per_rank) if len(data) else 0
    steps_per_epoch = math.ceil(batches_per_epoch / settings.accumulate)
    total = settings.epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = settings.base_lr
    if settings.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=base_lr, momentum=settings.momentum,
                                                           weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=settings.weight_decay)
    scaler = grad_scaler(device, settings.amp)
    log.info("train-student: %s, %d images, %d instances, %d categories; %d epochs of %d steps (batch %d x %d), "
             "%s mask loss, %s lr %g", settings.arch, len(data), n_inst, len(category_ids), settings.epochs,
             steps_per_epoch, settings.batch_size, settings.accumulate, settings.mask_loss, settings.optimizer, base_lr)

    # every rank's generators go into the checkpoint: each rank draws its own RoIs
    book = EpochBookkeeping(run, {"model": model, "optimizer": optimizer, "scaler": scaler}, settings.epochs, ctx=ctx,
                            rank_rngs=True)
    skip_batches = 0
    history: list[dict[str, Any]] = []
    ckpt = book.resume()
    if ckpt is not None:
        skip_batches = int(ckpt.get("batch", 0))
        history = list(ckpt.get("history", []))
    net = ctx.wrap(model)

    def checkpoint(epochs_done: int, batch: int, sums: Mapping[str, Any] | None = None, count: float = 0.0) -> None:
        # each rank's running loss sums of an unfinished epoch, so its record stays exact after a resume
        partial = ctx.all_gather_object(({k: float(v) for k, v in (sums or {}).items()}, float(count)))
        book.save(epochs_done, batch=batch, history=history, category_ids=category_ids, partial_ranks=partial)

    with StopSignals() as stop:
        for epoch in book.epochs(sampler, settings.seed):
            data.epoch = epoch
            indices = list(sampler)
            first = skip_batches if epoch == book.start_epoch else 0
            if first and ckpt is not None:  # the epoch's running loss sums, so its record stays exact
                book.add(*_partial_share(ckpt, ctx))
            net.train()
            optimizer.zero_grad(set_to_none=True)
            batches = _loader(data, indices[first * per_rank:], per_rank, settings.workers, device,
                              settings.seed * 1_000_003 + epoch)
            n_batches = len(batches)
            for b, (images, targets) in enumerate(batches):
                images, targets = _to_device(images, targets, device)
                set_loss_step(model, book.step)
                with autocast(device, settings.amp):
                    losses = net(images, targets)
                loss = sum(v.float() for v in losses.values())
                check_finite(loss, stage=STAGE, step=book.step, lr=optimizer.param_groups[0]["lr"])
                scaler.scale(loss / settings.accumulate).backward()
                book.add({k: v.float() for k, v in losses.items()})
                if (b + 1) % settings.accumulate == 0 or b + 1 == n_batches:
                    set_lr(optimizer, [base_lr] * len(optimizer.param_groups),
                           warmup_cosine(book.step, settings.warmup_iters, total, final=0.05))
                    if settings.clip_grad > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, settings.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    book.step_done()
                    if _stop_agreed(stop, ctx, device):
                        checkpoint(epoch, first + b + 1, book.sums, book.count)
                        ctx.barrier()  # no rank exits (and gets the job killed) before rank 0 has written
                        if ctx.is_main:
                            log.warning("train-student: checkpoint saved in %s at epoch %d, batch %d (step %d); exit "
                                        "%d: rerun with --resume", run.path, epoch + 1, first + b + 1, book.step,
                                        REQUEUE_EXIT)
                        raise Terminated(_signal_name(stop.requested))
            means = book.means()
            record = {"epoch": epoch + 1, "step": book.step, "loss": sum(means.values()), **means,
                      "lr": optimizer.param_groups[0]["lr"], "seconds": round(book.seconds, 3)}
            if ctx.is_main and val_ds is not None:
                record.update(validate(model, category_ids, val_ds, images_root, settings, device))
            history.append(record)
            if ctx.is_main:
                vm = f"  val mask AP {record['val_mask_ap']:.4f}" if record.get("val_mask_ap") is not None else ""
                log.info("train-student: epoch %d/%d  loss %.4f%s  (%.1f s)", epoch + 1, settings.epochs,
                         record["loss"], vm, record["seconds"])
                run.log_metrics(record)
            checkpoint(epoch + 1, 0)
            ctx.barrier()
    if ctx.is_main:
        run.save_model(unwrap_model(net).state_dict(), model_extra(settings, ds, frozen_bn, history))
    ctx.barrier()
    model.eval()
    return TrainResult(model, run.model_path.resolve(), category_ids, history)


def model_extra(settings: StudentSettings, ds: Dataset, frozen_bn: bool, history: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``model.pt`` holds beside the weights: enough to rebuild the model and name its categories."""
    spec = settings.spec(len(ds.categories), frozen_bn)
    return {"spec": spec.to_json(), "category_ids": [int(c["id"]) for c in ds.categories],
            "categories": ds.categories, "arch": settings.arch, "history": history}


def _partial_share(ckpt: Mapping[str, Any], ctx: DistContext) -> tuple[dict[str, float], float]:
    """This rank's running loss sums of the interrupted epoch. Each rank saved its own (the epoch's record
    sums them over ranks); resumed on another number of ranks, rank 0 takes all of them."""
    saved = ckpt.get("partial_ranks") or [(ckpt.get("partial_sums", {}), float(ckpt.get("partial_count", 0)))]
    if len(saved) == ctx.world_size:
        return dict(saved[ctx.rank][0]), float(saved[ctx.rank][1])
    if ctx.rank:
        return {}, 0.0
    sums: dict[str, float] = {}
    for part, _ in saved:
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return sums, float(sum(n for _, n in saved))


def _signal_name(signum: int | None) -> str:
    """The signal a stop was requested by (another rank's when this one got none)."""
    return signal.Signals(signum).name if signum is not None else "a signal to another rank"


def _stop_agreed(stop: StopSignals, ctx: DistContext, device: torch.device) -> bool:
    """Every rank stops at the same step: a signal seen by any rank stops all of them."""
    flag = torch.tensor(float(stop.requested is not None), device=device)
    return bool(ctx.all_reduce_sum(flag).item() > 0) if ctx.enabled else stop.requested is not None


def validate(model: nn.Module, category_ids: list[int], val_ds: Dataset, images_root: str | None,
             settings: StudentSettings, device: torch.device) -> dict[str, Any]:
    """Predict on the validation images and score them as ``wsis eval`` does."""
    from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

    preds = predict(model, category_ids, val_ds.images, images_root, val_ds.source, device,
                    score_threshold=settings.score_threshold, max_dets=settings.max_dets, amp=settings.amp)
    report = evaluate(val_ds, preds, EvalSettings(max_dets=max(settings.max_dets, 10)))
    segm = report.coco.get("segm")
    bbox = report.coco.get("bbox")
    return {"val_mask_ap": report.mask_ap, "val_box_ap": report.box_ap,
            "val_mask_ap50": segm.stats["AP50"] if segm else None, "val_box_ap50": bbox.stats["AP50"] if bbox else None,
            "val_mean_iou": report.mean_iou, "val_predictions": len(preds)}


def run(settings: StudentSettings, job: StudentJob, progress: Any = None) -> TrainResult:
    """Train on ``job.labels`` in the run folder ``job.run``: read and check the data (and ``settings.val``),
    load the backbone and ``settings.init_weights``, join the DDP group, then :func:`train_rounds`.

    ``progress`` is accepted for the stage contract; training logs per-epoch lines instead.
    """
    from wsis_cli.io.coco import load_dataset
    from wsis_cli.io.run_dir import read_model
    from wsis_cli.io.weights import load_weights
    from wsis_cli.models.student import weights_arch
    from wsis_cli.runtime.distributed import init_distributed
    from wsis_cli.runtime.seeding import seed_everything
    from wsis_cli.stages.student.data import check_images

    del progress
    ds = load_dataset(job.labels)
    val_ds = load_dataset(settings.val) if settings.val is not None else None
    check_images(ds, job.images)
    if val_ds is not None:
        check_images(val_ds, job.images)
    init = settings.init_weights
    init_state = read_model(init, STAGE)["model"] if init is not None else None
    backbone = load_weights(settings.weights, weights_arch(settings.arch))
    ctx = init_distributed(job.device)
    try:
        seed_everything(settings.seed)
        result = train_rounds(settings, ds, job.images, job.run, ctx, resume=job.resume, backbone_state=backbone,
                              init_state=init_state, init_source=str(init), val_ds=val_ds)
    finally:
        ctx.shutdown()
    if ctx.is_main:
        log.info("train-student: model written to %s", result.model_path)
    return result


def train_rounds(settings: StudentSettings, ds: Dataset, images_root: str | None, run_path: str | Path,
                 ctx: DistContext, *, resume: bool = False, backbone_state: Any | None = None,
                 init_state: Mapping[str, torch.Tensor] | None = None, init_source: str = "--init-weights",
                 val_ds: Dataset | None = None) -> TrainResult:
    """Train (``settings.rounds`` rounds of self-training) with ``run_path`` as the run folder.

    One round trains in ``run_path`` itself; several keep ``run_path/round-r`` folders (round r > 1 also
    holds the ``labels.json`` it was trained on) and write the last round's model to ``run_path/model.pt``.
    """
    from wsis_cli.io.coco import write_dataset
    from wsis_cli.stages.student.predict import results_to_dataset_annotations

    settings = settings.resolved()
    top = RunDir(run_path, STAGE, settings, resume=resume)
    if settings.rounds == 1:
        return train(settings, ds, images_root, top, ctx, backbone_state=backbone_state, init_state=init_state,
                     init_source=init_source, val_ds=val_ds)
    labels = ds
    result: TrainResult | None = None
    history: list[dict[str, Any]] = []
    for r in range(1, settings.rounds + 1):
        if r > 1:
            assert result is not None
            preds = predict(result.model, result.category_ids, ds.images, images_root, ds.source, ctx.device,
                            score_threshold=settings.round_score, max_dets=settings.round_max, amp=settings.amp)
            anns = results_to_dataset_annotations(preds, score_threshold=settings.round_score,
                                                  max_per_image=settings.round_max,
                                                  image_widths={int(im["id"]): int(im["width"]) for im in ds.images},
                                                  max_width=settings.round_max_width)
            labels = ds.with_annotations(anns)
            labels.source = str(Path(run_path) / f"round-{r}" / "labels.json")
            log.info("self-training round %d: %d pseudo-labels on %d images from round %d's predictions", r,
                     len(anns), len({a["image_id"] for a in anns}), r - 1)
        round_dir = RunDir(Path(run_path) / f"round-{r}", STAGE, {**_jsonable(settings), "round": r}, resume=resume)
        if r > 1 and ctx.is_main:
            write_dataset(labels, round_dir.path / "labels.json")
        result = train(settings, labels, images_root, round_dir, ctx, backbone_state=backbone_state,
                       init_state=init_state, init_source=init_source, val_ds=val_ds)
        history.extend({"round": r, **rec} for rec in result.history)
    assert result is not None
    if ctx.is_main:
        extra = model_extra(settings, ds, backbone_state is not None, history)
        top.save_model(result.model.state_dict(), {**extra, "rounds": settings.rounds})
    ctx.barrier()
    return TrainResult(result.model, top.model_path.resolve(), result.category_ids, history)


def _jsonable(settings: StudentSettings) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(settings)


def demo_student(images_dir: Path, labels: Dataset, work: Path, *, epochs: int = DEMO_EPOCHS,
                 mask_loss: str = "standard") -> list[dict[str, Any]]:
    """Train a tiny student on ``labels`` briefly (run folder ``work``) and return its COCO results on the
    same images (for ``wsis demo``; seconds per epoch on a laptop for a few dozen 128-px images)."""
    from wsis_cli.runtime.device import resolve_device

    settings = demo_settings(labels.images, epochs=epochs, mask_loss=mask_loss)
    ctx = DistContext(device=resolve_device("auto"))
    # one CPU thread: this student's tensors (2 images of 128 px, 64 channels) are too small for intra-op
    # threads to pay, and on a shared machine two spinning threads per process made an epoch 4-7x slower
    # (figures: bench/NOTES.md, "student demo: one CPU thread")
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        result = train_rounds(settings, labels, str(images_dir), work, ctx)
        return predict(result.model, result.category_ids, labels.images, str(images_dir), labels.source,
                       ctx.device, score_threshold=settings.score_threshold, max_dets=settings.max_dets,
                       amp=settings.amp)
    finally:
        torch.set_num_threads(threads)
