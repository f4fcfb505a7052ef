"""The recipe ``wsis demo`` labels its boxes with: a ResNet-18 stem trained from scratch on 48² crops."""

from __future__ import annotations

from wsis_cli.stages.mal.settings import MalSettings

# The demo's recipe: MAL's strength is a pretrained ViT, but the demo and the tests have no network, so a
# small ConvNet learns from scratch (it picks up colour and shape within a few hundred steps; a ViT does
# not). Steps are ~1000x fewer than upstream, so the warm-ups shrink and the teacher follows faster. What
# each choice was measured to give is in bench/NOTES.md ("mal-label demo recipe").
DEMO_SETTINGS = MalSettings(
    encoder="resnet18", weights="none", encoder_depth=1, crop_size=48, decoder_dim=32, scale_buckets=False,
    epochs=24, batch_size=4, lr=1e-3, warmup_epochs=0.5, mil_warmup=20, crf_warmup=60, crf_iterations=10,
    crf_variant="dense", crf_weight=4.0, ema_momentum=0.95, min_train_area=64.0, threshold=0.5,
)
