"""Every command the README and docs/ show still runs.

- Blocks marked `<!-- docs-test: run -->` are run, page by page, in order, in a new folder.
- Every other command of this project (`python -m mtl.*|study.*`, `hep2-*`, `python
  bench/*.py`, `python examples/*.py`, also inside `ray exec "..."` or after `ray job submit
  --`, and inline ones with arguments) is parsed by its own program's argument parser,
  stopping there: a renamed command, option or choice fails here, naming the page and line.
- `make` targets, `bash` scripts and `pip install -e '.[extra]'` extras must exist.
- Commands of other tools (ray, aws, mlflow, wandb, ...) are not checked.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARK = "<!-- docs-test: run -->"
SHELLS = {"bash", "sh", "shell", "console"}
OURS = re.compile(r"^(mtl|study)(\.|$)")
SEPARATORS = {"&&", "||", "|", ";"}
INLINE = re.compile(r"`((?:python -m [\w.]+|hep2-[\w-]+) [^`]+)`")
PYTHON = re.compile(r"(^|/)python(3(\.\d+)?)?$")  # python, python3.11, .venv/bin/python


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    text: str
    run: bool  # in a block marked to run

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def commands(page: Path) -> list[Command]:
    """The shell commands of a page's bash blocks (continued lines joined), and its inline
    ones that have arguments."""
    found, fence, run, marked, pending = [], None, False, False, None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence, run = stripped[3:].strip(), marked
            elif stripped:
                marked = stripped == RUN_MARK
            # Inline commands with arguments too (`python -m study.results rebuild DIR`).
            for inline in INLINE.findall(line):
                found.append(Command(page, number, inline, run=False))
            continue
        if stripped.startswith("```"):
            if pending:  # a block's last line ends in a backslash: the command ends here
                found.append(Command(page, pending[0], pending[1], run))
            fence, marked, pending = None, False, None
            continue
        if fence not in SHELLS or not stripped:
            continue
        text, start = (pending[1] + " " + stripped, pending[0]) if pending else (stripped, number)
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        found.append(Command(page, start, text, run))
    return found


ALL = [c for page in PAGES for c in commands(page)]


def segments(tokens: list[str]) -> list[list[str]]:
    """The tokens of a command line, split at the shell's separators (`&&`, `|`, ...)."""
    parts = [[]]
    for token in tokens:
        if token in SEPARATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def invocations(tokens: list[str]) -> list[list[str]]:
    """This project's programs called in `tokens`: each as [kind, target, *args]. Found also
    inside a quoted argument (`ray exec "python -m ..."`) and after other words (`ray job
    submit -- python -m ...`); the program's own arguments are not searched further."""
    found = []
    for segment in segments(tokens):
        for i, token in enumerate(segment):
            args = segment[i + 1 :]
            if " " in token and ("python" in token or "hep2-" in token):  # a quoted command
                found += invocations(shlex.split(token, comments=True))
            elif PYTHON.search(token) and args[:1] == ["-m"] and len(args) > 1:
                if OURS.match(args[1]):
                    found.append(["module", args[1], *args[2:]])
                break
            elif PYTHON.search(token) and args and args[0].endswith(".py"):
                found.append(["script", args[0], *args[1:]])
                break
            elif token.startswith("hep2-"):
                found.append(["script_entry", token, *args])
                break
    return found


def expand_synopsis(invocation: list[str]) -> list[list[str]]:
    """A synopsis (`[--level patch|image] [--set k=v ...]`) as commands: brackets and `...`
    dropped, one command per alternative of the `a|b|c` words (each choice is checked).
    Anything else is itself."""
    if not any(t.startswith("[") or t.endswith("]") or t == "..." for t in invocation):
        return [invocation]
    words = [t.strip("[]") for t in invocation if t.strip("[]") not in ("", "...")]
    choices = [w.split("|") if "|" in w else [w] for w in words]
    count = max(len(c) for c in choices)
    return [[c[min(i, len(c) - 1)] for c in choices] for i in range(count)]


class Parsed(BaseException):
    """Raised right after a program's arguments parsed: nothing of it runs. Not an Exception,
    so that no `except Exception` of the program catches it."""


def parse_only(monkeypatch, invocation: list[str]) -> None:
    kind, target, *args = invocation
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [target, *args])
    if kind == "script_entry":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert target in scripts, f"{target} is not a console command of pyproject.toml"
        module, function = scripts[target].split(":")
        main = getattr(__import__(module, fromlist=[function]), function)
        run = lambda: main(args)  # noqa: E731
    elif kind == "module":
        run = lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        path = ROOT / target
        assert path.is_file(), f"{target} does not exist"
        assert "argparse" in path.read_text(), f"{target} has no parser to check"
        monkeypatch.syspath_prepend(str(path.parent))  # as `python path` puts it first
        run = lambda: runpy.run_path(str(path), run_name="__main__")  # noqa: E731
    try:
        run()
    except Parsed:
        return
    except SystemExit as stop:  # --help, --version: 0; a parse error: 2
        assert stop.code in (0, None), f"exit status {stop.code}"
        return
    pytest.fail("the program returned without parsing its arguments")


# Running an imported module again as __main__ is what `python -m` does too; harmless here.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command", [c for c in ALL if not c.run], ids=str)
def test_documented_command_parses(command, monkeypatch, capsys):
    tokens = shlex.split(command.text, comments=True)
    if tokens[:1] == ["make"]:
        makefile = (ROOT / "Makefile").read_text()
        for target in tokens[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{command}: {target}"
        return
    if not tokens:  # a comment
        return
    if tokens[:1] == ["bash"] and len(tokens) > 1 and tokens[1].endswith(".sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / tokens[1])]).returncode == 0, command
        return
    if tokens[:3] == ["pip", "install", "-e"]:
        extras = re.fullmatch(r"\.(\[([\w,]+)\])?", tokens[3])
        assert extras, f"{command}: {tokens[3]} is not this project (.) or its extras (.[x])"
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        for extra in extras.group(2).split(",") if extras.group(2) else []:
            assert extra in declared["optional-dependencies"], f"{command}: no extra {extra}"
        return
    for invocation in [v for i in invocations(tokens) for v in expand_synopsis(i)]:
        try:
            parse_only(monkeypatch, invocation)
        except (AssertionError, pytest.fail.Exception) as error:
            err = capsys.readouterr().err
            raise AssertionError(f"{command}: {command.text}\n{error}\n{err}") from None


def test_the_docs_show_this_projects_commands():
    """The extraction itself: a page's commands are found, and the run marks are used."""
    checked = [c for c in ALL if c.run or invocations(shlex.split(c.text, comments=True))]
    assert len(checked) >= 30
    assert {c.page.name for c in ALL if c.run} >= {"real-data.md"}


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(c.run for c in commands(p))], ids=str)
def test_documented_walkthrough_runs(page, tmp_path):
    """The page's marked blocks, in order, in a new folder, with this environment's python."""
    script = "\n".join(c.text for c in commands(page) if c.run)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"{page.name}:\n{script}\n{done.stdout[-3000:]}\n{done.stderr}"
