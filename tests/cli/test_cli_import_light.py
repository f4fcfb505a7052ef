"""The CLI layer stays import-light: ``wsis --help``, every ``<command> --help`` and completion never
load torch, cv2, numpy and friends (they belong inside the command functions).

Modules and commands are discovered at run time (pkgutil, the app's command tree), so whatever is
added later is checked too. Everything runs in fresh interpreters: the test process itself has
long since imported numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "cv2", "h5py", "pycocotools", "numpy", "triton", "wsis_kernels",
         "faster_coco_eval", "PIL", "scipy")


def _heavy(modules: list[str]) -> list[str]:
    return sorted({m for m in modules if m.split(".")[0] in HEAVY})


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, **(env or {})})


def _commands() -> list[list[str]]:
    """Every command path of the app (nested groups included), found in a fresh interpreter."""
    code = textwrap.dedent("""
        import json, typer
        from wsis_cli.cli.app import app
        def walk(cmd, path):
            yield path
            for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
                yield from walk(sub, path + [name])
        print(json.dumps(list(walk(typer.main.get_command(app), []))))
    """)
    res = _python(code)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_every_cli_module_imports_light() -> None:
    """Import the app and then each wsis_cli.cli module; attribute any heavy import to its module."""
    code = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        HEAVY = {HEAVY!r}
        def heavy():
            return sorted({{m for m in sys.modules if m.split(".")[0] in HEAVY}})
        report = {{}}
        import wsis_cli.cli.app
        report["wsis_cli.cli.app"] = heavy()
        import wsis_cli.cli
        names = sorted(m.name for m in pkgutil.iter_modules(wsis_cli.cli.__path__, "wsis_cli.cli."))
        for name in names:
            before = set(heavy())
            importlib.import_module(name)
            report[name] = sorted(set(heavy()) - before)
        print(json.dumps({{"modules": names, "report": report}}))
    """)
    res = _python(code)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert "wsis_cli.cli.app" in data["modules"] and len(data["modules"]) >= 3
    offenders = {name: mods for name, mods in data["report"].items() if mods}
    assert not offenders, (
        "CLI modules must import heavy libraries inside the command function, not at module level: "
        + "; ".join(f"{name} pulls in {', '.join(m for m in mods if '.' not in m)}"
                    for name, mods in offenders.items())
    )


# A tiny driver: run `wsis ARGS...` in-process as `python -m wsis_cli` would, and write the names of
# all loaded modules to $WSIS_TEST_MODULES at exit (after SystemExit too), wherever stdout goes.
_DRIVER = textwrap.dedent("""
    import atexit, json, os, runpy, sys
    def _dump():
        with open(os.environ["WSIS_TEST_MODULES"], "w") as fh:
            json.dump(sorted(sys.modules), fh)
    atexit.register(_dump)
    sys.argv = ["wsis", *json.loads(os.environ["WSIS_TEST_ARGS"])]
    runpy.run_module("wsis_cli", run_name="__main__", alter_sys=True)
""")


def _run_light(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    out = tmp_path / "modules.json"
    res = _python(_DRIVER, env={"WSIS_TEST_MODULES": str(out), "WSIS_TEST_ARGS": json.dumps(args)})
    assert out.is_file(), f"wsis {' '.join(args)} did not reach exit: {res.stderr[-2000:]}"
    return res, json.loads(out.read_text())


COMMANDS = _commands()


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "wsis")
def test_help_is_light(path: list[str], tmp_path: Path) -> None:
    res, modules = _run_light([*path, "--help"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout
    assert _heavy(modules) == [], f"`wsis {' '.join(path)} --help` imported {_heavy(modules)}"


def test_version_and_bare_wsis_are_light(tmp_path: Path) -> None:
    res, modules = _run_light(["--version"], tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("wsis ")
    assert _heavy(modules) == []
    res, modules = _run_light([], tmp_path)  # no arguments prints help (exit code is typer's choice)
    assert "Usage" in res.stdout + res.stderr
    assert _heavy(modules) == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_is_light(shell: str, tmp_path: Path) -> None:
    res, modules = _run_light(["completion", shell], tmp_path)
    assert res.returncode == 0, res.stderr
    assert _heavy(modules) == [], f"`wsis completion {shell}` imported {_heavy(modules)}"


def test_the_check_would_catch_a_heavy_import(tmp_path: Path) -> None:
    """Guard against a vacuous test: the same driver does see numpy when something imports it."""
    out = tmp_path / "modules.json"
    code = "import numpy\n" + _DRIVER
    res = _python(code, env={"WSIS_TEST_MODULES": str(out), "WSIS_TEST_ARGS": json.dumps(["--help"])})
    assert res.returncode == 0, res.stderr
    assert "numpy" in _heavy(json.loads(out.read_text()))
