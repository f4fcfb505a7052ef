"""Training loop of ``wsis mal-label``: student + EMA teacher, MIL and CRF losses, AdamW, warm-up + cosine.

One step (MAL, ``upstream-implementations.md`` §2.2):

1. the student predicts mask logits for the colour-augmented crops, the EMA teacher (no gradient) for
   the un-augmented ones (same crop and flip);
2. ``L = 4 · ramp(1000) · MIL(student, box) + 0.5 · ramp(4000) · CRF(student, teacher, box)``, the ramps
   counted in steps and applied during epoch 0 only, as upstream;
3. AdamW (betas 0.9/0.9, weight decay 5e-4) with a one-epoch linear warm-up, then cosine to 0.2 x lr;
4. the teacher follows the student: ``θ_t ← 0.996 θ_t + 0.004 θ_s`` (it starts as an exact copy; the
   official code gives it its own random initialisation, which only makes the first targets noise).

The CRF sees the teacher's (un-augmented) normalised crop bilinearly resized to the mask grid: MAL's
choice of the normalised image keeps ``zeta = 0.1`` in its units. The CRF target must not depend on
which colour augmentation the student happened to get. ``crf_variant="dense"`` swaps MAL's 3x3
``MeanField`` for the dense CRF (``wsis_kernels.crf.DENSE_CRF``, the ``CRFParams`` defaults, not
refine-crf's settings) on the [0, 1] crop: on the synthetic set
its targets are closer to the truth (mean IoU 0.89 vs 0.80 against ground truth in crop space, from the
same predictions of IoU 0.72), which a from-scratch encoder needs more than a pretrained ViT does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wsis_cli.models.mal import MalEncoder, MalNet
from wsis_cli.models.mal_losses import crf_loss, mil_loss
from wsis_cli.runtime.device import autocast, grad_scaler
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.training import EMA, EpochBookkeeping, check_finite, linear_ramp, set_lr, warmup_cosine
from wsis_cli.stages.mal.settings import CRF_VARIANTS, MalTrainConfig, ModelSpec, auto_epochs
from wsis_kernels.crf import CRFParams, mal_crf_params

log = get_logger("mal-label")

LR_PER_SAMPLE = 1.5e-6  # upstream: lr = 1.5e-6 x GPUs x batch per GPU


def build_model(spec: ModelSpec, weights: str = "none") -> MalNet:
    """The MAL network with the encoder's ``weights`` (a name, a file or ``none``; decoders start random)."""
    from wsis_cli.models.backbones import VITS
    from wsis_cli.stages.backbone import build_backbone

    depth = spec.encoder_depth
    if spec.encoder in VITS:
        backbone = build_backbone(spec.encoder, weights)
    else:
        # CNNs (ResNets, timm:NAME): output stride 16; encoder_depth = stages kept
        backbone = build_backbone(spec.encoder, weights, output_stride=16, frozen_bn=spec.frozen_bn, stages=depth or 4)
        depth = 0
    return MalNet(MalEncoder(backbone, depth, spec.patch, spec.conv_stem), spec.crop_size, spec.decoder_dim, spec.scale_buckets)


def crf_params(cfg: MalTrainConfig) -> CRFParams:
    """The CRF that refines the student/teacher average into the CRF loss's target.

    ``mal``: MAL's ``MeanField`` (3x3 window, geometric pooling, no unary after the start, clamp to
    [0.1, 0.9]) on the ImageNet-normalised crop with colour std ``crf_zeta``. ``dense``: our kernel's
    default bilateral + smoothness CRF (5x5 window at dilation 2, the prediction as unary in every update,
    as ``refine-crf``) on the [0, 1] crop; ``crf_zeta`` does not apply.
    """
    if cfg.crf_variant == "mal":
        return mal_crf_params(iterations=cfg.crf_iterations, zeta=cfg.crf_zeta)
    if cfg.crf_variant == "dense":
        return CRFParams(iterations=cfg.crf_iterations)
    raise ValueError(f"unknown CRF variant {cfg.crf_variant!r}; choose from {', '.join(CRF_VARIANTS)}")


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``(B, 3, H, W)`` back to [0, 1] colours."""
    from wsis_cli.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    mean = IMAGENET_MEAN.to(x.device, x.dtype).view(1, 3, 1, 1)
    std = IMAGENET_STD.to(x.device, x.dtype).view(1, 3, 1, 1)
    return (x * std + mean).clamp_(0.0, 1.0)


def _loss_ramp(epoch: int, step: int, steps: int) -> float:
    return 1.0 if epoch > 0 else linear_ramp(step, steps)


def train(model: MalNet, dataset: Any, cfg: MalTrainConfig, run_dir: Any, ctx: Any, progress: Any = None,
          extra: dict[str, Any] | None = None) -> tuple[MalNet, MalNet]:
    """Train ``model`` (in place) on the :class:`RoiTrainSet` ``dataset``; returns (student, EMA teacher).

    ``model.pt`` gets the student, the teacher and ``extra`` (e.g. what rebuilds the network).

    ``run_dir`` (:class:`wsis_cli.io.run_dir.RunDir`) receives ``last.pt`` after every epoch and
    ``metrics.jsonl`` lines; a resumed run continues from its last finished epoch with the same
    optimiser, scaler, EMA teacher, step count and RNG state. ``ctx`` is the
    :class:`wsis_cli.runtime.distributed.DistContext` (DDP when launched by torchrun).
    """
    from wsis_cli.runtime.seeding import worker_init_fn

    device = ctx.device
    # channels-last convolutions: 1.4x faster forward + backward of the demo's ResNet on one CPU thread
    model.to(device, memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_momentum)
    global_batch = cfg.batch_size * ctx.world_size
    lr = cfg.lr if cfg.lr is not None else LR_PER_SAMPLE * global_batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.9), eps=1e-8,
                                  weight_decay=cfg.weight_decay)
    scaler = grad_scaler(device, cfg.amp)
    sampler = ctx.sampler(dataset, shuffle=True, seed=cfg.seed)
    drop_last = len(dataset) > global_batch  # a lone short batch would get an outsized step
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        drop_last=drop_last, worker_init_fn=worker_init_fn, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.workers > 0)
    per_epoch = max(len(loader), 1)
    epochs = cfg.epochs if cfg.epochs is not None else auto_epochs(per_epoch)
    total = epochs * per_epoch
    warmup = int(round(cfg.warmup_epochs * per_epoch))
    # mal-label's checkpoints have always stored the finished epoch's index (epoch_is_index)
    book = EpochBookkeeping(run_dir, {"model": model, "teacher": ema, "optimizer": optimizer, "scaler": scaler},
                            epochs, ctx=ctx, steps_per_epoch=per_epoch, progress=progress,
                            label="mal-label: training", epoch_is_index=True)
    book.resume()
    student = ctx.wrap(model)
    params = crf_params(cfg)
    # MAL's CRF works on the normalised crop (its zeta is in those units); the dense one on [0, 1] colours
    unnormalise = cfg.crf_variant != "mal"
    out = model.decoder.out
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    log.info("mal-label: training on %d boxes, %d epochs x %d steps (batch %d x %d processes), lr %.3g, on %s",
             len(dataset), epochs, per_epoch, cfg.batch_size, ctx.world_size, lr, device)
    # one order per epoch, not one stream per process: a resumed run replays the same epochs
    for epoch in book.epochs(sampler, cfg.seed):
        dataset.set_epoch(epoch)
        student.train()
        for batch in loader:
            step = book.step
            set_lr(optimizer, base_lrs, warmup_cosine(step, warmup, total, cfg.final_lr))
            x_s = batch["student"].to(device, non_blocking=True, memory_format=torch.channels_last)
            x_t = batch["teacher"].to(device, non_blocking=True, memory_format=torch.channels_last)
            box = batch["box"].to(device, non_blocking=True)
            bucket = batch["bucket"].to(device, non_blocking=True)
            with autocast(device, cfg.amp):
                logits = student(x_s, bucket)
                with torch.no_grad():
                    t_logits = ema.teacher(x_t, bucket)
            prob = torch.sigmoid(logits.float())
            t_prob = torch.sigmoid(t_logits.float())
            crf_image = F.interpolate(x_t, size=(out, out), mode="bilinear", align_corners=False)
            if unnormalise:
                crf_image = denormalize(crf_image)
            mil = mil_loss(prob, box).mean()
            crf = crf_loss(crf_image, prob, t_prob, box, params).mean()
            loss = (cfg.mil_weight * _loss_ramp(epoch, step, cfg.mil_warmup) * mil
                    + cfg.crf_weight * _loss_ramp(epoch, step, cfg.crf_warmup) * crf)
            check_finite(loss, stage="mal-label", step=step, lr=optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            ema.update(model)
            book.step_done()
            book.add({"loss": loss.detach(), "mil": mil.detach(), "crf": crf.detach()})
        means = book.means()
        record = {"epoch": epoch, "step": book.step, **{k: means.get(k, 0.0) for k in ("loss", "mil", "crf")},
                  "lr": optimizer.param_groups[0]["lr"], "seconds": book.seconds}
        if ctx.is_main:
            log.info("mal-label: epoch %d/%d  loss %.4f  mil %.4f  crf %.4f  (%.1f s)", epoch + 1, epochs,
                     record["loss"], record["mil"], record["crf"], record["seconds"])
            run_dir.log_metrics(record)
            book.save(epoch + 1)
        ctx.barrier()
    if ctx.is_main:
        run_dir.save_model(model.state_dict(), {"teacher": ema.state_dict(), **(extra or {})})
    return model, ema.teacher
