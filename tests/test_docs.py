"""The README and docs/ still say true things about the tree: every relative link points to a
file (and heading) that exists; every repository path (``search/tune/searcher.py``) and dotted
name (``search.results.pick_best``) they mention exists; and every ``python -m MODULE ...``
command in a fenced code block names a module that exists and uses only flags that module's
parser accepts.

Fast tier, no Ray: the parsers are built in-process where the module has a builder; any other
module is asked ``python -m MODULE --help`` once, in a subprocess.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Modules whose argparse parser can be built without running anything: module -> builder.
PARSERS: dict[str, tuple[str, str]] = {
    "search.run": ("search.options", "build_parser"),
    "awd.train": ("awd.train", "build_parser"),
    "awd.evaluate": ("awd.evaluate", "build_parser"),
    "search.evaluate": ("search.evaluate", "build_parser"),
    "awd.data": ("awd.data.__main__", "build_parser"),
    "reports": ("reports.__main__", "parser"),
}

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)")
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code (links there are not links)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def _anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text())
    return frozenset(_slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M))


def _links() -> list[tuple[Path, str]]:
    return [(doc, m.group(1)) for doc in DOCS for m in LINK.finditer(_prose(doc.read_text()))]


def test_docs_exist():
    assert (ROOT / "README.md").is_file()
    assert len(DOCS) > 1, "docs/ holds the reference pages the README links to"


@pytest.mark.parametrize("doc,target", _links(), ids=lambda v: v if isinstance(v, str) else _rel(v))
def test_relative_link_points_to_an_existing_file(doc: Path, target: str):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
        return
    path_part, _, anchor = target.partition("#")
    path = (doc.parent / path_part).resolve() if path_part else doc
    assert path.exists(), f"{_rel(doc)}: link to {target!r}: no such file"
    assert path.is_relative_to(ROOT), f"{_rel(doc)}: link to {target!r} leaves the repository"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{_rel(doc)}: link to {target!r}: no such heading"


def _open_quote(prefix: str) -> str:
    """The shell quote still open at the end of PREFIX ('' if none)."""
    quote = ""
    for ch in prefix:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
    return quote


def _command(rest: str, closing: str) -> str:
    """The words of a command, quoted ones blanked: up to the end of the line, a shell operator
    (``&&``, ``||``, ``|``, ``;``), a comment or the quote the command was opened in."""
    out, quote = [], ""
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = ""
            out.append(ch if not quote else " ")
            continue
        if ch == closing or ch in "|;&" or (ch == "#" and (i == 0 or rest[i - 1].isspace())):
            break
        if ch in "'\"":
            quote = ch
        out.append(ch)
    return "".join(out).rstrip()


PACKAGES = ("awd", "search", "spaces", "reports", "benchmarks", "tests", "docs", ".ci")
REPO_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(map(re.escape, PACKAGES))})/[\w./-]*)")
DOTTED = re.compile(r"(?<![\w./-])((?:awd|search|spaces|reports|benchmarks)(?:\.\w+)+)"
                    r"(?<!\.md)(?<!\.py)(?<!\.json)(?<!\.yaml)(?![\w/-])")


def _mentions(pattern: re.Pattern[str]) -> list[tuple[Path, str]]:
    found = {(doc, m.group(1).rstrip(".")) for doc in DOCS
             for m in pattern.finditer(doc.read_text())}
    return sorted(found)


@pytest.mark.parametrize("doc,path", _mentions(REPO_PATH),
                         ids=lambda v: v if isinstance(v, str) else _rel(v))
def test_mentioned_path_exists(doc: Path, path: str):
    assert (ROOT / path).exists(), f"{_rel(doc)} mentions {path}: no such file or folder"


@pytest.mark.parametrize("doc,name", _mentions(DOTTED),
                         ids=lambda v: v if isinstance(v, str) else _rel(v))
def test_mentioned_module_or_name_exists(doc: Path, name: str):
    """``a.b.c``: the longest prefix that is a module of the tree, and the next part named in
    its source; read from the files, nothing imported."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.is_file():
            break
    else:
        pytest.fail(f"{_rel(doc)} mentions {name}: no such module")
    rest = parts[i:]
    if rest:
        text = source.read_text()
        assert re.search(rf"\b{rest[0]}\b", text), \
            f"{_rel(doc)} mentions {name}: {rest[0]} is not in {_rel(source)}"


def _commands() -> list[tuple[Path, str, str]]:
    """(doc, module, command text) for every ``python -m MODULE ...`` in a code block."""
    found = []
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text()):
            if m.group(1).strip() in ("python", "py", "yaml", "json", "toml"):
                continue
            block = re.sub(r"\\\n\s*", " ", m.group(2))  # join continued lines
            for line in block.splitlines():
                for cm in COMMAND.finditer(line):
                    closing = _open_quote(line[: cm.start()])
                    words = _command(line[cm.end():], closing)
                    found.append((doc, cm.group(1), cm.group(0) + words))
    return found


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _parser_flags(sub)
    return flags


@cache
def _accepts(module: str) -> Callable[[str], bool]:
    """Whether MODULE's command line takes a flag: its parser's options, else its --help text."""
    if module in PARSERS:
        name, builder = PARSERS[module]
        flags = _parser_flags(getattr(importlib.import_module(name), builder)())
        return flags.__contains__
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"python -m {module} --help failed:\n{done.stderr[-2000:]}"
    text = done.stdout
    return lambda flag: re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


COMMANDS = _commands()


def test_the_docs_show_commands():
    modules = {module for _, module, _ in COMMANDS}
    assert {"search.run", "awd.train", "reports"} <= modules


@pytest.mark.parametrize("doc,module,command", COMMANDS,
                         ids=lambda v: v if isinstance(v, str) else _rel(v))
def test_documented_command_uses_a_real_module_and_real_flags(doc: Path, module: str,
                                                              command: str, pytestconfig):
    where = f"{_rel(doc)}: `{command}`"
    if module == "pytest":  # the running pytest's own parser, its plugins' flags included
        flags = _parser_flags(pytestconfig._parser.optparser)  # pytest 9: an argparse parser
        unknown = [f for f in FLAG.findall(command) if f.split("=", 1)[0] not in flags]
        assert not unknown, f"{where}: pytest does not accept {', '.join(unknown)}"
        return
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    assert spec is not None, f"{where}: no module {module}"
    flags = FLAG.findall(command)
    unknown = [f for f in flags if not _accepts(module)(f.split("=", 1)[0])]
    assert not unknown, f"{where}: {module} does not accept {', '.join(unknown)}"
