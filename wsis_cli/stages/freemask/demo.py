"""The recipe ``wsis demo``'s label-free path runs with: a small ResNet pre-trained from scratch on the demo
images (``--pretrain``'s region contrast), then Free Mask on images read at 3x the demo's 128 px."""

from __future__ import annotations

from wsis_cli.stages.freemask.settings import BackboneSpec, PretrainSettings

# tests/stages/test_stage_freemask_quality.py: why upsampling matters
DEMO_SIDE = 384
DEMO_PRETRAIN = PretrainSettings(epochs=12, lr=3e-3, batch_size=8, short_side=128)
DEMO_SPEC = BackboneSpec(arch="resnet18", weights="none", stage=2, last_stride=2, short_side=DEMO_SIDE)
