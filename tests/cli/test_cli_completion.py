"""Shell completion: the committed scripts are fresh, parse in their shells, and really complete.

Behaviour is checked by sourcing the bash script in ``bash -c`` with COMP_WORDS/COMP_CWORD set (and
with ``complete -C`` in fish when it is installed), for every subcommand and option the app has now,
so commands added later are covered without touching this file.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import pytest
import typer

from wsis_cli.cli import completion_scripts as cs

ROOT = Path(__file__).resolve().parents[2]
COMPLETIONS = ROOT / "completions"
REFRESH = "uv run wsis completion --write completions/"


def wsis(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsis_cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


# ------------------------------------------------------------------------------------ shell drivers


def bash_complete(script: str, cases: list[list[str]], cwd: Path) -> list[list[str]]:
    """COMPREPLY for each case (the words typed, the last one being completed), in one bash process."""
    lines = [script, "set +e"]
    for words in cases:
        lines += [
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
            f"COMP_CWORD={len(words) - 1}",
            "COMPREPLY=()",
            "_wsis",
            "echo '@@case'",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(lines)], capture_output=True,
                         text=True, cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    chunks = out.stdout.split("@@case\n")[1:]
    assert len(chunks) == len(cases)
    return [[w for w in c.split("\n") if w] for c in chunks]


def fish_complete(script_path: Path, lines: list[str], cwd: Path) -> list[list[str]]:
    """Candidates fish offers for each command line (``complete -C``), without descriptions."""
    cmds = [f"source {cs_fish_quote(str(script_path))}"]
    for line in lines:
        cmds += ["echo '@@case'", f"complete -C {cs_fish_quote(line)}"]
    out = subprocess.run(["fish", "--no-config", "-c", "\n".join(cmds)], capture_output=True, text=True,
                         cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    chunks = out.stdout.split("@@case\n")[1:]
    return [[w.split("\t")[0] for w in c.split("\n") if w] for c in chunks]


def cs_fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture(scope="module")
def tree() -> cs.Node:
    return cs.build_tree()


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    (tmp_path / "gt.json").write_text("{}")
    (tmp_path / "maps.h5").write_text("")
    (tmp_path / "imgs").mkdir()
    return tmp_path


# ------------------------------------------------------------------------------- the committed files


def test_committed_scripts_are_fresh(tmp_path: Path) -> None:
    res = wsis("completion", "--write", str(tmp_path))
    assert res.returncode == 0, res.stderr
    stale = []
    for shell, name in cs.FILE_NAMES.items():
        committed = COMPLETIONS / name
        if not committed.is_file() or committed.read_text() != (tmp_path / name).read_text():
            stale.append(f"completions/{name} ({shell})")
    assert not stale, f"stale completion scripts: {', '.join(stale)}; refresh them with `{REFRESH}`"


def test_print_matches_write(tmp_path: Path) -> None:
    assert wsis("completion", "--write", str(tmp_path)).returncode == 0
    for shell, name in cs.FILE_NAMES.items():
        res = wsis("completion", shell)
        assert res.returncode == 0, res.stderr
        assert res.stdout == (tmp_path / name).read_text(), shell
        assert res.stderr == ""


def test_generation_is_deterministic() -> None:
    for shell in cs.SHELLS:
        assert cs.generate(shell) == cs.generate(shell)


def test_bash_syntax() -> None:
    res = subprocess.run(["bash", "-n", str(COMPLETIONS / "wsis.bash")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_syntax() -> None:
    res = subprocess.run(["zsh", "-n", str(COMPLETIONS / "_wsis")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (COMPLETIONS / "_wsis").read_text().startswith("#compdef wsis\n")


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_syntax() -> None:
    res = subprocess.run(["fish", "--no-config", "-n", str(COMPLETIONS / "wsis.fish")], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------------- the CLI itself


def test_usage_errors(tmp_path: Path) -> None:
    assert wsis("completion").returncode == 2
    assert wsis("completion", "tcsh").returncode == 2
    assert wsis("completion", "bash", "--write", str(tmp_path)).returncode == 2
    res = wsis("completion", "--write", str(tmp_path / "no" / "such" / "dir"))
    assert res.returncode == 3, res.stderr
    assert "does not exist" in res.stderr


def test_help_has_install_hints() -> None:
    res = wsis("completion", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for hint in ("source <(wsis completion bash)", "~/.config/fish/completions/wsis.fish", "_wsis", "fpath"):
        assert hint in text


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    assert wsis("completion", "--write", str(tmp_path)).returncode == 0
    for name in cs.FILE_NAMES.values():
        assert (tmp_path / name).stat().st_mode & 0o044 == 0o044, f"{name} is not world-readable"


# -------------------------------------------------------------------------- bash, on the real app


def _long(opt: cs.Opt) -> str | None:
    return next((n for n in opt.names if n.startswith("--")), None)


def test_bash_offers_every_subcommand_and_option(tree: cs.Node, files: Path) -> None:
    script = cs.generate("bash")
    cases: list[list[str]] = [["wsis", ""]]
    expect: list[tuple[str, list[str]]] = [("", [c.path[-1] for c in tree.children])]
    for cmd in tree.children:
        name = cmd.path[-1]
        cases.append(["wsis", name[:2]])
        expect.append((name, [name]))
        for opt in cmd.options:
            long = _long(opt)
            if long:
                cases.append(["wsis", name, long[:4]])
                expect.append((long, [long]))
    got = bash_complete(script, cases, files)
    for words, (what, wanted), reply in zip(cases, expect, got, strict=True):
        for w in wanted:
            assert w in reply, f"`{' '.join(words)}<TAB>` did not offer {w!r} ({what}); got {reply}"
    assert "completion" in got[0] and "eval" in got[0]


def test_bash_completes_option_values(tree: cs.Node, files: Path) -> None:
    script = cs.generate("bash")
    cases: list[list[str]] = []
    checks: list[cs.Opt] = []
    for cmd in tree.children:
        name = cmd.path[-1]
        for opt in cmd.options:
            if not opt.takes_value:
                continue
            last = opt.names[-1]
            cases.append(["wsis", name, last, ""])
            checks.append(opt)
            if last.startswith("--"):  # --opt=value reaches the function as --opt, =, value
                cases.append(["wsis", name, last, "=", ""])
                checks.append(opt)
    got = bash_complete(script, cases, files)
    for words, opt, reply in zip(cases, checks, got, strict=True):
        typed = " ".join(words)
        if opt.kind == "choice":
            assert sorted(reply) == sorted(opt.choices), typed
        elif opt.kind == "file":
            assert {"gt.json", "maps.h5", "imgs"} <= set(reply), typed
            assert ("-" in reply) == opt.dash, typed
        elif opt.kind == "dir":
            assert "imgs" in reply and "gt.json" not in reply, typed
        else:
            assert reply == [], f"`{typed}<TAB>` should offer nothing for a {opt.metavar}; got {reply}"


def test_bash_eval_specifics(tree: cs.Node, files: Path) -> None:
    """The cases the brief names, once the eval command has them."""
    names = {c.path[-1]: c for c in tree.children}
    if "eval" not in names:
        pytest.skip("no eval command yet")
    longs = {n for o in names["eval"].options for n in o.names}
    script = cs.generate("bash")
    got = bash_complete(script, [["wsis", "ev"], ["wsis", "eval", "--cl"]], files)
    assert "eval" in got[0]
    if "--class-agnostic" in longs:
        assert got[1] == ["--class-agnostic"]


# ---------------------------------------------------------------- the generator on a synthetic app

demo = typer.Typer(name="wsis", add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})


@demo.callback()
def _demo_root(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False) -> None:
    """Root help."""


class Backend(str, Enum):
    faster = "faster"
    coco = "pycocotools"


@demo.command("eval")
def _demo_eval(
    pred: Annotated[Path, typer.Argument(help="Predictions.", allow_dash=True)],
    gt: Annotated[Path, typer.Option("--gt", "-g", dir_okay=False, help="GT [dataset]: it's 'quoted'.")],
    out: Annotated[Path, typer.Option("--out", "-o", allow_dash=True, help="Output.")] = Path("-"),
    report: Annotated[str, typer.Option("--json", help="Report (- for stdout).")] = "",
    images: Annotated[Path | None, typer.Option("--images", "-i", file_okay=False)] = None,
    backend: Annotated[Backend, typer.Option(help="Backend.")] = Backend.faster,
    mode: Annotated[Literal["fast", "exact"], typer.Option(help="Mode.")] = "fast",
    agnostic: Annotated[bool, typer.Option("--class-agnostic/--per-class", help="One class.")] = False,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Repeatable.")] = None,
    secret: Annotated[int, typer.Option("--secret", hidden=True)] = 0,
) -> None:
    """Evaluate predictions. Second sentence is dropped."""


@demo.command("mal-label")
def _demo_mal(inputs: Annotated[list[Path], typer.Argument(help="Shards.")]) -> None:
    """Label boxes."""


_group = typer.Typer(help="A nested group.")


@_group.command("do-it")
def _demo_do(level: Annotated[Backend, typer.Argument()]) -> None:
    """Do it."""


@_group.command("hidden", hidden=True)
def _demo_hidden() -> None:
    """Hidden."""


demo.add_typer(_group, name="grp")


def test_tree_of_synthetic_app() -> None:
    tree = cs.build_tree(demo)
    assert [c.path for c in tree.children] == [("eval",), ("grp",), ("mal-label",)]
    assert [c.path for c in tree.children[1].children] == [("grp", "do-it")]  # hidden left out
    ev = tree.children[0]
    assert ev.help == "Evaluate predictions."
    opts = {o.names: o for o in ev.options}
    assert opts[("-g", "--gt")].kind == "file" and not opts[("-g", "--gt")].dash
    assert opts[("-o", "--out")].kind == "file" and opts[("-o", "--out")].dash
    assert opts[("--json",)].kind == "file" and opts[("--json",)].dash  # str, but "- for stdout"
    assert opts[("-i", "--images")].kind == "dir"
    assert opts[("--backend",)].choices == ("faster", "pycocotools")
    assert opts[("--mode",)].choices == ("fast", "exact")
    assert not opts[("--class-agnostic",)].takes_value and ("--per-class",) in opts
    assert opts[("--seed",)].kind == "none"
    assert opts[("--tag",)].repeat
    assert ("-h", "--help") in opts and ("--secret",) not in opts
    assert ev.args[0].dash and ev.args[0].kind == "file"
    assert tree.children[2].args[0].many


def test_bash_on_synthetic_app(files: Path) -> None:
    script = cs.generate("bash", demo)
    cases = [
        ["wsis", ""],
        ["wsis", "--version", "e"],
        ["wsis", "eval", "--cl"],
        ["wsis", "eval", "--backend", ""],
        ["wsis", "eval", "--backend", "=", "py"],
        ["wsis", "eval", "--out", "=", ""],
        ["wsis", "eval", "-o", ""],
        ["wsis", "eval", "--gt", ""],
        ["wsis", "eval", "--images", ""],
        ["wsis", "eval", "--seed", ""],
        ["wsis", "eval", ""],
        ["wsis", "eval", "--gt", "gt.json", "x.json", ""],
        ["wsis", "eval", "--", "-"],
        ["wsis", "grp", ""],
        ["wsis", "grp", "do-it", ""],
        ["wsis", "mal-label", "a", "b", "g"],
        ["wsis", "eval", "--sec"],
    ]
    got = bash_complete(script, cases, files)
    assert got[0] == ["eval", "grp", "mal-label"]
    assert got[1] == ["eval"]
    assert got[2] == ["--class-agnostic"]
    assert got[3] == ["faster", "pycocotools"]
    assert got[4] == ["pycocotools"]
    assert sorted(got[5]) == ["-", "gt.json", "imgs", "maps.h5"]
    assert sorted(got[6]) == ["-", "gt.json", "imgs", "maps.h5"]
    assert sorted(got[7]) == ["gt.json", "imgs", "maps.h5"]
    assert got[8] == ["imgs"]
    assert got[9] == []
    assert sorted(got[10]) == ["-", "gt.json", "imgs", "maps.h5"]
    assert got[11] == []  # eval takes one positional
    assert got[12] == ["-"]  # after --, "-" is a positional value, not an option
    assert got[13] == ["do-it"]
    assert got[14] == ["faster", "pycocotools"]
    assert got[15] == ["gt.json"]
    assert got[16] == []  # hidden options are not offered


def test_generated_scripts_parse_for_synthetic_app(tmp_path: Path) -> None:
    for shell, name in cs.FILE_NAMES.items():
        (tmp_path / name).write_text(cs.generate(shell, demo))
    checks = [["bash", "-n", str(tmp_path / "wsis.bash")]]
    if shutil.which("zsh"):
        checks.append(["zsh", "-n", str(tmp_path / "_wsis")])
    if shutil.which("fish"):
        checks.append(["fish", "--no-config", "-n", str(tmp_path / "wsis.fish")])
    for cmd in checks:
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, (cmd, res.stderr)


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_on_synthetic_app(files: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fish") / "wsis.fish"
    path.write_text(cs.generate("fish", demo))
    lines = ["wsis ", "wsis --version e", "wsis eval --cl", "wsis eval --backend ", "wsis eval -o ",
             "wsis eval --gt ", "wsis eval --images ", "wsis grp ", "wsis grp do-it ", "wsis eval --seed "]
    got = fish_complete(path, lines, files)
    assert got[0] == ["eval", "grp", "mal-label"]
    assert got[1] == ["eval"]
    assert got[2] == ["--class-agnostic"]
    assert got[3] == ["faster", "pycocotools"]
    assert sorted(got[4]) == ["-", "gt.json", "imgs/", "maps.h5"]
    assert sorted(got[5]) == ["gt.json", "imgs/", "maps.h5"]
    assert got[6] == ["imgs/"]
    assert got[7] == ["do-it"]
    assert got[8] == ["faster", "pycocotools"]
    assert got[9] == []


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_offers_every_subcommand(tree: cs.Node, files: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fish") / "wsis.fish"
    path.write_text(cs.generate("fish"))
    names = [c.path[-1] for c in tree.children]
    got = fish_complete(path, ["wsis "] + [f"wsis {n[:2]}" for n in names], files)
    assert got[0] == names
    for name, reply in zip(names, got[1:], strict=True):
        assert name in reply


def test_summary() -> None:
    assert cs.summary("First one. Second one.") == "First one."
    assert cs.summary("[bold]Bold[/bold] text\nwraps here.\n\nNext para.") == "Bold text wraps here."
    assert cs.summary("Box [x, y, w, h] kept.") == "Box [x, y, w, h] kept."
    assert cs.summary(None) == ""
    assert len(cs.summary("word " * 100)) <= 100
