"""The recipe ``wsis demo`` trains its CAM classifier with: the packaged ImageNet EfficientNet-Lite0."""

from __future__ import annotations

from wsis_cli.models.backbone_names import DEFAULT_ARCH, DEFAULT_WEIGHTS
from wsis_cli.stages.cam.settings import CamSettings, TrainSettings

# The demo's classifier: pretrained (weights that install with wsis, as the paper's ImageNet setting),
# every image trains (no held-out split); the maps are ``wsis cam``'s defaults (geometry, multi-scale).
DEMO_TRAIN = TrainSettings(arch=DEFAULT_ARCH, weights=DEFAULT_WEIGHTS, epochs=12, batch_size=8, lr=0.002,
                           val_fraction=0.0, seed=0)
DEMO_SETTINGS = CamSettings(train=DEMO_TRAIN)
