"""`wsis mal-label` through real processes: a tiny train-and-label run, --checkpoint via stdout, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wsis_cli.io import coco
from wsis_cli.stages.synth import stage as synth

WSIS = [sys.executable, "-m", "wsis_cli"]
# one intra-op thread: the runs are tiny, and two spin-waiting threads on a busy machine made a 2-step epoch
# take 7.8 s instead of 0.2 s
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--encoder", "vit_tiny", "--weights", "none", "--encoder-depth", "1", "--crop-size", "32",
        "--decoder-dim", "8", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--crf-iterations", "3",
        "--min-train-area", "16", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-mal") / "d"
    synth.run(synth.SynthSettings(num_images=3, height=64, width=64, seed=2), synth.SynthJob(root))
    return root

# runs the CLI, then says on its last stderr line whether torch was imported
TORCH_PROBE = ("import sys; from wsis_cli.cli.app import main\n"
               "try:\n    main(sys.argv[1:])\n"
               "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")


def _bad(data, tmp_path, change):
    ds = json.loads((data / "boxes.json").read_text())
    change(ds["annotations"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ds))
    return path


def test_train_then_label_from_checkpoint_to_stdout(data, tmp_path):
    out = tmp_path / "masks.json"
    r = subprocess.run([*WSIS, "mal-label", str(data / "boxes.json"), "-i", str(data / "images"), "-o", str(out),
                        *TINY], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    ds = coco.load_dataset(out)
    assert all(a["segmentation"] and a["area"] > 0 for a in ds.annotations)
    model = tmp_path / "masks.mal-label-run" / "model.pt"
    assert model.exists() and (tmp_path / "masks.mal-label-run" / "last.pt").exists()
    # a second training run into the same folder is refused (usage error) ...
    r = subprocess.run([*WSIS, "mal-label", str(data / "boxes.json"), "-i", str(data / "images"), "-o", str(out),
                        *TINY], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "--resume" in r.stderr
    # ... while --checkpoint only labels, here through a pipe
    r = subprocess.run([*WSIS, "mal-label", "-", "-i", str(data / "images"), "-o", "-", "--checkpoint", str(model),
                        "--device", "cpu", "-q"], input=(data / "boxes.json").read_text(), capture_output=True,
                       text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["annotations"] == json.loads(out.read_text())["annotations"]


@pytest.mark.parametrize("change, words", [
    (lambda anns: anns[0].update(bbox=[3, 3, 0, 5]), "zero width"),
    (lambda anns: anns[1].update(bbox=[3, 3, -2, 5]), "negative width"),
    (lambda anns: anns[0].update(bbox=[64.5, 3, 0.4, 5]), "outside"),
    (lambda anns: anns[0].update(bbox=[100, 3, 4, 5]), "beyond"),
    (lambda anns: anns[0].pop("bbox"), "has no 'bbox'"),
])
def test_bad_boxes_exit_3_with_one_line(data, tmp_path, change, words):
    """The real process: one line naming the file and record, exit 3, no output, and torch never imported
    (the boxes are checked before the network stack loads, so this fails at once)."""
    bad = _bad(data, tmp_path, change)
    out = tmp_path / "o.json"
    r = subprocess.run([sys.executable, "-c", TORCH_PROBE, "mal-label", str(bad), "-i", str(data / "images"), "-o",
                        str(out), *TINY], capture_output=True, text=True, env=ENV)
    assert r.returncode == 3, r.stderr
    *lines, probe = r.stderr.strip().splitlines()
    assert probe == "NO-TORCH"
    assert len(lines) == 1 and "bad.json" in lines[0] and "annotations[" in lines[0] and words in lines[0]
    assert not out.exists()


def test_missing_image_and_bad_checkpoint_exit_3(data, tmp_path):
    r = subprocess.run([*WSIS, "mal-label", str(data / "boxes.json"), "-i", str(tmp_path), "-o",
                        str(tmp_path / "o.json"), *TINY], capture_output=True, text=True, env=ENV)
    assert r.returncode == 3 and "not found" in r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = subprocess.run([*WSIS, "mal-label", str(data / "boxes.json"), "-i", str(data / "images"), "-o",
                        str(tmp_path / "o.json"), "--checkpoint", str(junk), "-q"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 3 and "junk.pt" in r.stderr


BAD_OPTIONS = [["--encoder", "vgg16"], ["--threshold", "1.5"], ["--outside", "zeros"], ["--crop-size", "40"],
               ["--crf-variant", "full"], ["--predict-with", "mixed"], ["--conv-stem", "--encoder", "resnet18"],
               ["--conv-stem", "--patch", "12"], ["--encoder", "resnet18", "--encoder-depth", "1", "--crop-size", "34"]]


@pytest.mark.parametrize("extra", BAD_OPTIONS, ids=lambda e: " ".join(e))
def test_bad_options_exit_2(data, tmp_path, extra):
    """In-process through Typer's runner (the same parsing and validation as the real command)."""
    from typer.testing import CliRunner

    from wsis_cli.cli.app import app

    out = tmp_path / "o.json"
    r = CliRunner().invoke(app, ["mal-label", str(data / "boxes.json"), "-i", str(data / "images"), "-o", str(out),
                                 *TINY, *extra])
    assert r.exit_code == 2, (extra, r.output)
    assert not out.exists() and not (tmp_path / "o.mal-label-run").exists()  # refused before any work


def test_bad_option_exits_2_before_loading_torch(data, tmp_path):
    """The real process: a bad flag is refused before the network stack is imported (so at once)."""
    r = subprocess.run([sys.executable, "-c", TORCH_PROBE, "mal-label", str(data / "boxes.json"), "-i", str(data / "images"),
                        "-o", str(tmp_path / "o.json"), *TINY, "--crop-size", "40"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2, r.stderr
    assert "multiple of the encoder stride" in r.stderr and r.stderr.strip().endswith("NO-TORCH")


def test_default_vit_b_16_loads_a_weights_file(data, tmp_path):
    """The default encoder through the real `--weights FILE` path: torch.load → key matching → ViT."""
    import torch
    import torchvision

    net = torchvision.models.vit_b_16(weights=None)  # torchvision's layout, as a downloaded file has it
    # every tensor a view into one shared random buffer: the whole vit_b_16 state dict in a ~10 MB file
    state = net.state_dict()
    buf = torch.randn(max(v.numel() for v in state.values()) + len(state))
    state = {k: buf[i : i + v.numel()].view(v.shape) for i, (k, v) in enumerate(state.items())}
    weights = tmp_path / "vit_b_16.pth"
    torch.save(state, weights)
    out = tmp_path / "masks.json"
    # lr 0: the trained encoder must still be exactly the file's weights; 1 block keeps it small
    args = ["--encoder", "vit_b_16", "--weights", str(weights), "--encoder-depth", "1", "--crop-size", "32",
            "--decoder-dim", "8", "--epochs", "1", "--batch-size", "4", "--lr", "0", "--crf-iterations", "2",
            "--min-train-area", "16", "--device", "cpu", "-q"]
    r = subprocess.run([*WSIS, "mal-label", str(data / "boxes.json"), "-i", str(data / "images"), "-o", str(out),
                        *args], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    saved = torch.load(tmp_path / "masks.mal-label-run" / "model.pt", weights_only=False)
    assert saved["spec"]["encoder"] == "vit_b_16"
    enc = {k.removeprefix("encoder.backbone."): v for k, v in saved["model"].items() if k.startswith("encoder.")}
    pairs = {"conv_proj.weight": "conv_proj.weight", "class_token": "class_token",
             "pos_embedding": "encoder.pos_embedding", "ln.weight": "encoder.ln.weight",
             "layers.0.mlp.0.weight": "encoder.layers.encoder_layer_0.mlp.0.weight",
             "layers.0.self_attention.in_proj_weight":
                 "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"}
    for ours, theirs in pairs.items():
        assert torch.equal(enc[ours], state[theirs]), ours
    assert not any(k.startswith("layers.1.") for k in enc)  # --encoder-depth 1 kept one block
    assert len(coco.load_dataset(out).annotations) == len(coco.load_dataset(data / "boxes.json").annotations)
