"""examples/slurm/ on a real (one-node) SLURM: the scripts as a user submits them, with faults injected.

Needs a running SLURM whose clients answer (``sinfo``): ``.ci/run`` starts one with ``.ci/slurm.sh``;
elsewhere the tests skip. The scripts are submitted unchanged: resources are overridden on the sbatch
command line and CPU-tiny wsis flags follow the scripts' arguments. On 9 synthetic 64x64 images:

* the label array (3 shards) with task 1 requeued (``scontrol requeue``) and task 2 sent SIGTERM
  (``scancel --signal=TERM``) after their first image; both resume, and the merge job's file is
  byte-identical to one unsharded run;
* a merge of an incomplete array fails instead of writing a partial file;
* the 2-rank student (Gloo, one task per rank) sent SIGUSR1 mid-epoch: checkpoint, exit 143, requeue,
  --resume, completion; compared with an uninterrupted 2-rank run of the same script.

Jobs are held at those points by tests/examples/slurm_hooks/sitecustomize.py (first attempts only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "examples" / "slurm"
HOOKS = Path(__file__).resolve().parent / "slurm_hooks"
CI_CONF = Path(os.environ.get("WSIS_SLURM_ROOT", "/tmp/wsis-slurm")) / "etc" / "slurm.conf"
BIN = Path(sys.executable).parent  # the environment's wsis

pytestmark = pytest.mark.slurm

SBATCH_SMALL = ["--cpus-per-task=1", "--mem=1G", "--time=15"]
LABEL_FLAGS = ["--batch-size", "2", "--device", "cpu"]  # after the script's own: they win
STUDENT_FLAGS = ["--arch", "resnet18-fpn", "--weights", "none", "--epochs", "1", "--batch-size", "4",
                 "--min-size", "64", "--max-size", "64", "--rois-per-image", "16", "--mask-head-channels", "16",
                 "--warmup-iters", "1", "--lr", "0.02", "--device", "cpu", "-q"]
MAL_TRAIN = ["--encoder", "vit_tiny", "--weights", "none", "--encoder-depth", "1", "--crop-size", "32",
             "--decoder-dim", "8", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--crf-iterations", "3",
             "--min-train-area", "16", "--device", "cpu", "-q"]
TIMEOUT = 420.0  # seconds for the whole chain; it takes ~1-2 min on two busy cores


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "WSIS_PROGRESS_INTERVAL": "3600"}
    if "SLURM_CONF" not in env and CI_CONF.is_file():
        env["SLURM_CONF"] = str(CI_CONF)
    for name in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
        del env[name]  # a test run inside a SLURM job must not leak that job's settings into its submissions
    env.update(extra)
    return env


def _slurm_missing() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM clients (sbatch, sinfo) are not installed; `bash .ci/slurm.sh start` sets up a one-node SLURM"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=_env(), timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    states = r.stdout.split()
    if r.returncode != 0 or not states:
        return f"no SLURM controller answers (sinfo: {(r.stderr or r.stdout).strip()[:200]}); " \
               "`bash .ci/slurm.sh start` starts a one-node SLURM"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"the SLURM node is not usable (state {states[0]})"
    return None


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env or _env(),
                       timeout=300)
    assert r.returncode == 0, f"{args[:2]} exit {r.returncode}: {r.stderr[-2000:]}"
    return r.stdout


def sbatch(cwd: Path, *args: str | Path, env: dict[str, str] | None = None) -> str:
    return run("sbatch", "--parsable", *args, cwd=cwd, env=env).strip().split(";")[0]


def jobs(job: str) -> dict[str, dict[str, str]]:
    """``scontrol show job`` of a job (an array: every task), keyed by ``JobId`` (``A_i`` for tasks)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=_env(),
                       timeout=30)
    out = {}
    for line in r.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if fields.get("ArrayTaskId") else fields["JobId"]
        out[key] = fields
    return out


def wait_for(what: str, check, deadline: float, logs: Path, interval: float = 0.5):  # noqa: ANN001, ANN201
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("wsis-*.out")))
    queue = subprocess.run(["squeue", "-a"], capture_output=True, text=True, env=_env()).stdout
    pytest.fail(f"timed out waiting for {what}\n{queue}\n{tails}")


def release_when_requeued(job: str, deadline: float, logs: Path) -> None:
    """A requeued job waits ~120 s before it may start again; once it is back in the queue and its last
    attempt's processes are gone from the node, start it now (sooner, slurmd refuses it: "Job credential
    revoked", and the job FAILS)."""
    def requeued() -> str | None:
        info = jobs(job.split("_")[0]).get(job, {})
        ok = info.get("JobState") == "PENDING" and int(info.get("Restarts", "0")) >= 1
        return info["JobId"] if ok else None

    def gone(job_id: str) -> bool:
        r = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, env=_env())
        return r.returncode != 0 and len(r.stdout.strip().splitlines()) <= 1

    job_id = wait_for(f"{job} to be requeued", requeued, deadline, logs)
    wait_for(f"the processes of {job}'s first attempt to end", lambda: gone(job_id), deadline, logs, 0.2)
    # slurmd refuses a credential issued in the same second as the revocation (times have 1 s resolution)
    time.sleep(2.5)
    run("scontrol", "update", f"JobId={job}", "StartTime=now", cwd=logs)


def finished(job: str) -> bool:
    states = {j["JobState"] for j in jobs(job).values()}
    return bool(states) and states <= {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    reason = _slurm_missing()
    if reason:
        pytest.skip(reason)
    top = tmp_path_factory.mktemp("slurm")
    sub = top / "submit"  # the folder jobs are submitted from: their logs land here (no logs/ folder)
    pauses = top / "pauses"
    for d in (sub, pauses):
        d.mkdir()
    data, images, boxes = top / "data", top / "data" / "images", top / "data" / "boxes.json"
    run("wsis", "synth", data, "--num-images", "9", "--size", "64x64", "-q", cwd=top)
    run("wsis", "mal-label", boxes, "-i", images, "-o", top / "mal.json", *MAL_TRAIN, cwd=top)
    model = top / "mal.mal-label-run" / "model.pt"
    deadline = time.monotonic() + TIMEOUT

    # the labelling chain: tasks 1 and 2 hold after their first image, first attempt only
    hold = {"PYTHONPATH": str(HOOKS), "WSIS_TEST_PAUSE_LABEL": str(pauses), "WSIS_TEST_PAUSE_TASKS": "1:2"}
    out = top / "out"
    array = sbatch(sub, "--array=0-2", *SBATCH_SMALL, SCRIPTS / "label_array.sbatch", boxes, images, model, out,
                   *LABEL_FLAGS, env=_env(**hold))
    merged = top / "merged.json"
    merge = sbatch(sub, f"--dependency=afterok:{array}", *SBATCH_SMALL, SCRIPTS / "merge.sbatch", out, merged,
                   boxes)
    student_args = [*SBATCH_SMALL, "--mem=2G", "--nodes=1", "--ntasks-per-node=2", "--gres=gpu:2",
                    f"--dependency=afterok:{merge}"]
    student = sbatch(sub, *student_args, SCRIPTS / "train_student.sbatch", merged, images, top / "student",
                     *STUDENT_FLAGS, env=_env(PYTHONPATH=str(HOOKS), WSIS_TEST_PAUSE_STUDENT=str(pauses)))
    # the uninterrupted, unsharded labelling, meanwhile (same flags as the array's tasks)
    single = top / "single.json"
    ref = subprocess.Popen([BIN / "wsis", "mal-label", boxes, "-i", images, "--checkpoint", model, "-o", single,
                            "--workers", "1", "--batch-size", "64", *LABEL_FLAGS], env=_env(),
                           stderr=subprocess.PIPE, text=True)

    wait_for("tasks 1 and 2 to hold after one image",
             lambda: all((pauses / f"label-{t}.paused").exists() for t in (1, 2)), deadline, sub)
    run("scontrol", "requeue", f"{array}_1", cwd=sub)
    run("scancel", "--signal=TERM", f"{array}_2", cwd=sub)
    for task in (1, 2):
        release_when_requeued(f"{array}_{task}", deadline, sub)
    assert ref.wait(timeout=300) == 0, ref.stderr.read() if ref.stderr else ""
    # the uninterrupted student trains on that labelling (byte-identical to the merged one, checked below)
    # while the array's tasks wait to restart
    reference = sbatch(sub, *student_args[:-1], SCRIPTS / "train_student.sbatch", single, images,
                       top / "student-ref", *STUDENT_FLAGS)

    wait_for("both student ranks to hold after their first step",
             lambda: all((pauses / f"student-{r}.paused").exists() for r in (0, 1)), deadline, sub)
    run("scancel", "--batch", "--signal=USR1", student, cwd=sub)  # as --signal=B:USR1@300 sends it
    release_when_requeued(student, deadline, sub)
    for job in (array, merge, student, reference):
        wait_for(f"job {job} to end", lambda job=job: finished(job), deadline, sub, interval=1.0)
    states = {k: v for job in (array, merge, student, reference) for k, v in jobs(job).items()}
    return {"top": top, "sub": sub, "out": out, "boxes": boxes, "merged": merged, "single": single,
            "images": images, "array": array, "merge": merge, "student": student, "reference": reference,
            "states": states}


def log(chain: dict, name: str) -> str:
    path = chain["sub"] / name
    assert path.is_file(), f"no log {name} in the submit folder: {sorted(p.name for p in chain['sub'].iterdir())}"
    return path.read_text()


def test_every_job_completed_and_the_interrupted_ones_were_requeued(chain: dict) -> None:
    a, s = chain["array"], chain["student"]
    states = chain["states"]
    assert {k: v["JobState"] for k, v in states.items()} == {k: "COMPLETED" for k in states}, states
    restarts = {k: int(v["Restarts"]) for k, v in states.items()}
    assert restarts == {f"{a}_0": 0, f"{a}_1": 1, f"{a}_2": 1, chain["merge"]: 0, s: 1, chain["reference"]: 0}


def test_merged_labels_are_byte_identical_to_one_unsharded_run(chain: dict) -> None:
    assert chain["merged"].read_bytes() == chain["single"].read_bytes()
    assert not list(chain["out"].glob("*.partial"))


def test_logs_land_in_the_submit_folder_and_keep_every_attempt(chain: dict) -> None:
    a = chain["array"]
    requeued = log(chain, f"wsis-label-{a}_1.out")
    assert "attempt 1," in requeued and "attempt 2," in requeued, requeued
    assert "terminated (SIGTERM)" in requeued  # the first attempt's last line survived the requeue
    signalled = log(chain, f"wsis-label-{a}_2.out")
    assert "attempt 1," in signalled and "requeueing task 2" in signalled and "attempt 2," in signalled, signalled
    log(chain, f"wsis-label-{a}_0.out")
    assert "merged 3 shards" in log(chain, f"wsis-merge-{chain['merge']}.out")
    student = log(chain, f"wsis-student-{chain['student']}.out")
    assert "attempt 1," in student and "checkpoint saved" in student and "attempt 2," in student, student


def test_a_resumed_task_reports_its_whole_shard(chain: dict) -> None:
    a = chain["array"]
    for task in (1, 2):
        shard = json.loads((chain["out"] / f"masks.{task}.json").read_text())
        text = log(chain, f"wsis-label-{a}_{task}.out")
        line = re.search(r"labelled (\d+) boxes on (\d+) images \((\d+) of them resumed", text)
        assert line, text
        assert (int(line[1]), int(line[2])) == (len(shard["annotations"]), len(shard["images"])) == \
               (len(shard["annotations"]), 3)
        assert int(line[3]) >= 1


def test_no_traceback_in_any_log(chain: dict) -> None:
    for path in chain["sub"].glob("wsis-*.out"):
        assert "Traceback" not in path.read_text(), f"{path.name}:\n{path.read_text()[-3000:]}"


def test_merge_of_an_incomplete_array_fails(chain: dict) -> None:
    """Started by hand (no afterok) while a shard is unfinished or missing: FAILED, and no merged file."""
    sub, top = chain["sub"], chain["top"]
    cases = {"partial": top / "bad-partial", "missing": top / "bad-missing"}
    for folder in cases.values():
        folder.mkdir()
        for task in (0, 1):
            shutil.copy(chain["out"] / f"masks.{task}.json", folder)
    (cases["partial"] / "masks.2.json.partial").write_text('{"stage": "mal-label"}\n')
    ids = {name: sbatch(sub, *SBATCH_SMALL, SCRIPTS / "merge.sbatch", folder, folder / "masks.json",
                        chain["boxes"]) for name, folder in cases.items()}
    deadline = time.monotonic() + 120
    for job in ids.values():
        wait_for(f"merge job {job}", lambda job=job: finished(job), deadline, sub)
    for name, job in ids.items():
        assert jobs(job)[job]["JobState"] == "FAILED", name
        assert not (cases[name] / "masks.json").exists()
    assert "unfinished shards" in log(chain, f"wsis-merge-{ids['partial']}.out")
    assert "missing" in log(chain, f"wsis-merge-{ids['missing']}.out").lower()


def test_resumed_two_rank_student_completes_with_a_usable_model(chain: dict) -> None:
    """The 2-rank resume is not compared bit for bit: only rank 0's RNG state is saved (a known, separate bug)."""
    top = chain["top"]
    got, ref = top / "student", top / "student-ref"
    records = [json.loads(x) for x in (got / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(expected) == 1 and records[0]["step"] == expected[0]["step"] >= 2
    import torch

    model, twin = (torch.load(p / "model.pt", map_location="cpu", weights_only=False)["model"] for p in (got, ref))
    assert {k: tuple(v.shape) for k, v in model.items()} == {k: tuple(v.shape) for k, v in twin.items()}
    assert all(torch.isfinite(v.float()).all() for v in model.values())
    same = all(torch.equal(v, twin[k]) for k, v in model.items())
    print(f"resumed 2-rank student bitwise equal to the uninterrupted one: {same}")
