"""`mal-label` settings: one source of truth for the defaults (ModelSpec, MalTrainConfig), mirrored by the CLI."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields

import pytest
import torch

from wsis_cli.cli.mal_label import mal_label
from wsis_cli.stages.mal.demo import DEMO_SETTINGS
from wsis_cli.stages.mal.settings import UPSTREAM, MalSettings, auto_crop_size, auto_epochs
from wsis_cli.stages.mal.train import MalTrainConfig, ModelSpec, crf_params, denormalize
from wsis_kernels.crf import CRFParams, mal_crf_params


def _defaults(cls) -> dict:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def test_settings_take_their_defaults_from_the_model_spec_and_train_config():
    settings = _defaults(MalSettings)
    shared = {**_defaults(ModelSpec), **_defaults(MalTrainConfig)}
    for name in set(shared) - {"frozen_bn", "workers", "encoder_depth", "crop_size"}:
        assert settings[name] == shared[name], name
    # and hand them back unchanged, the auto crop and encoder depth resolved (stage 1 of a CNN at 48² crops)
    s = MalSettings()
    assert s.encoder_depth is None and s.crop_size is None
    assert s.train_config() == MalTrainConfig()
    tiny_boxes = [{"bbox": [0, 0, 20, 20]}] * 3
    assert s.with_crop_for(tiny_boxes).model_spec() == ModelSpec(frozen_bn=True, encoder_depth=1)
    with pytest.raises(ValueError, match="auto"):
        s.model_spec()  # an unresolved crop never builds a network silently
    demo = DEMO_SETTINGS.train_config(workers=2)
    assert (demo.epochs, demo.lr, demo.workers) == (DEMO_SETTINGS.epochs, DEMO_SETTINGS.lr, 2)
    # the defaults, trained longer
    assert DEMO_SETTINGS.with_crop_for(tiny_boxes).model_spec() == s.with_crop_for(tiny_boxes).model_spec()


def test_auto_crop_is_96_unless_that_magnifies_the_median_box_over_4x():
    assert auto_crop_size([20.0] * 5 + [200.0] * 4) == 48  # nuclei: median side 20 px
    assert auto_crop_size([26.0, 24.0, 100.0]) == 96  # median 26 px: magnified 3.7x
    assert auto_crop_size([24.0]) == 96 and auto_crop_size([23.9]) == 48
    assert auto_crop_size([]) == 48
    boxes = [{"bbox": [0, 0, 60, 40]}, {"bbox": [5, 5, 50, 50]}]
    assert MalSettings().with_crop_for(boxes).crop_size == 96
    assert MalSettings(crop_size=64).with_crop_for(boxes).crop_size == 64  # a given crop is kept
    assert MalSettings().with_crop_for(boxes).model_spec().encoder_depth == 2  # stride 8 at 96²
    with pytest.raises(ValueError, match="auto; pick one with --crop-size"):
        MalSettings(encoder="vit_h_14")  # neither auto crop is a multiple of 14


def test_cli_defaults_are_the_settings_defaults():
    params = inspect.signature(mal_label).parameters
    settings = _defaults(MalSettings)
    renamed = {"no_amp": ("amp", lambda v: not v)}
    checked = 0
    for name, p in params.items():
        key, conv = renamed.get(name, (name, lambda v: v))
        if key in settings:
            assert conv(p.default) == settings[key], name
            checked += 1
    assert checked == len(settings)  # every setting is a flag


def test_auto_encoder_depth_keeps_a_fine_grid_and_every_vit_block():
    assert MalSettings(crop_size=48).resolved_depth() == 1  # 48 / 4 = 12 cells
    assert MalSettings().resolved_depth(48) == 1
    assert MalSettings(crop_size=96).resolved_depth() == 2  # 96 / 8
    assert MalSettings(crop_size=512).resolved_depth() == 4  # MAL's crops: every stage, as before
    assert MalSettings(crop_size=32).resolved_depth() == 1  # too small for any: the finest
    assert MalSettings(encoder="vit_b_16", crop_size=512).resolved_depth() == 0
    assert MalSettings(crop_size=512, encoder_depth=2).resolved_depth() == 2  # a given depth is kept


def test_auto_epochs_aim_at_a_fixed_number_of_steps():
    assert MalSettings().epochs is None
    assert auto_epochs(111) == 6  # 12 nuclei images: the recipe as measured
    assert auto_epochs(25) == 24  # the demo's ~100 boxes: capped
    assert auto_epochs(690) == 1  # 60 nuclei images, 2,758 boxes: not hours on a CPU
    assert auto_epochs(0) == 24


def test_upstream_recipe_is_mals():
    spec, cfg = UPSTREAM.model_spec(), UPSTREAM.train_config()
    assert (spec.encoder, spec.crop_size, spec.decoder_dim, spec.scale_buckets) == ("vit_b_16", 512, 256, True)
    assert (cfg.lr, cfg.mil_warmup, cfg.crf_warmup, cfg.ema_momentum) == (None, 1000, 4000, 0.996)


def test_crf_variants():
    assert crf_params(MalTrainConfig(crf_variant="mal")) == mal_crf_params(iterations=10, zeta=0.1)
    assert crf_params(UPSTREAM.train_config()) == mal_crf_params(iterations=100, zeta=0.1)  # MAL's MeanField
    assert crf_params(MalTrainConfig(crf_variant="dense", crf_iterations=7)) == CRFParams(iterations=7)
    with pytest.raises(ValueError, match="crf variant"):
        MalSettings(crf_variant="full")
    from wsis_cli.models.backbones import normalize

    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)


@pytest.mark.parametrize("encoder, depth, patch, conv_stem", [
    ("resnet18", 1, 0, False), ("resnet18", 2, 0, False), ("resnet18", 0, 0, False), ("vit_tiny", 1, 0, False),
    ("vit_tiny", 1, 8, False), ("vit_tiny", 1, 4, True), ("vit_tiny", 1, 0, True),
])
def test_encoder_stride_matches_the_built_network(encoder, depth, patch, conv_stem):
    """The CLI checks the crop size with this arithmetic before torch loads: it must agree with the network."""
    from wsis_cli.stages.mal.settings import encoder_stride
    from wsis_cli.stages.mal.train import build_model

    stride = encoder_stride(encoder, depth if encoder.startswith("resnet") else 0, patch, conv_stem)
    spec = MalSettings(encoder=encoder, weights="none", encoder_depth=depth, patch=patch, conv_stem=conv_stem,
                       crop_size=64, decoder_dim=8).model_spec()
    assert build_model(spec).encoder.stride == stride
    with pytest.raises(ValueError, match="multiple of the encoder stride"):
        MalSettings(encoder=encoder, encoder_depth=depth, patch=patch, conv_stem=conv_stem, crop_size=64 + stride // 2)


def test_settings_module_is_light():
    """The CLI validates flags through mal_settings before the network stack loads."""
    import subprocess
    import sys

    code = "import sys, wsis_cli.stages.mal.settings; print(sorted(m for m in ('torch', 'numpy', 'cv2') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
