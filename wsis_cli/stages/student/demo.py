"""The recipe ``wsis demo`` trains its student with: a small ResNet-18-FPN from scratch, sized for a CPU."""

from __future__ import annotations

from typing import Any

from wsis_cli.stages.student.settings import StudentSettings

DEMO_EPOCHS = 16


def demo_settings(images: list[dict[str, Any]], *, epochs: int = DEMO_EPOCHS, mask_loss: str = "standard",
                  seed: int = 0) -> StudentSettings:
    """A small student for ``wsis demo`` and tests: ResNet-18-FPN from scratch at the images' own size.

    Sized for a CPU (see the README's demo section for what each choice was measured to give): GroupNorm
    everywhere (BatchNorm's running statistics lag a from-scratch network whose weights change fast, and
    batches hold two images), a 64-channel FPN and 256-d box head (the 256-channel FPN and RPN convs cost
    more than the ResNet-18 itself at 128 px), 64 sampled RoIs and 200 proposals per image, AdamW at 1e-3
    (SGD at 0.02 or 0.04 learnt far less in the same 192 steps).
    """
    side = int(min(min(im["height"], im["width"]) for im in images)) if images else 128
    side = max(32, side)
    return StudentSettings(arch="resnet18-fpn", weights="none", mask_loss=mask_loss, min_size=side,
                           max_size=max(side, max(max(im["height"], im["width"]) for im in images) if images else side),
                           epochs=epochs, batch_size=2, optimizer="adamw", lr=1e-3, warmup_iters=10, rois_per_image=64,
                           mask_head_channels=64, group_norm=True, fpn_channels=64, box_head_dim=256, proposals=200,
                           pairwise_warmup=20, max_dets=30, seed=seed, workers=0)
