"""--weights: none, torchvision names (validated without network), local files (safe loading, clear errors)."""

import argparse

import pytest
import torch
import torchvision

from wsis_cli.io.weights import load_weights, looks_like_path
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.stages.backbone import build_resnet


def test_none_means_random_init():
    assert load_weights("none", "resnet18") is None


def test_unknown_torchvision_name_is_a_usage_error():
    with pytest.raises(UsageError, match="IMAGENET9K"):
        load_weights("IMAGENET9K_V7", "resnet18")


def test_local_dino_style_checkpoint_with_namespace_loads(tmp_path):
    ref = torchvision.models.resnet18()
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {"module.backbone." + k: v for k, v in ref.state_dict().items()},
                "args": argparse.Namespace(arch="resnet18"), "epoch": 3}, path)
    net = build_resnet("resnet18", str(path))
    assert torch.equal(net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


@pytest.mark.parametrize(("content", "message"), [(b"", "is damaged or incomplete"),
                                                   (b"garbage" * 10, "is not a PyTorch checkpoint file")])
def test_corrupt_checkpoint_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=f"bad.pth.*{message}"):
        load_weights(str(path), "resnet18")


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="file not found"):
        load_weights(str(tmp_path / "nope.pth"), "resnet18")
    assert looks_like_path("x/y") and looks_like_path("a.pth") and not looks_like_path("IMAGENET1K_V1")
