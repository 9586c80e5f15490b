"""The documentation, checked like code: the MkDocs site builds with ``--strict`` (any warning fails
it), every ```python block of README.md and docs/ runs, the CLI page names every option of every
command, the architecture picture is what its script draws, and the README stays a front door.

A page's python blocks run in order in one namespace (a page reads as one session), in a
temporary folder. An HTML comment just above a block says what it needs, and the page stops there,
skipped with the reason, where that is missing:
``<!-- test: needs data -->`` (MNIST in ``$FASTCNN_DATA``), ``<!-- test: needs MODULE -->`` (an
importable module, e.g. onnxruntime), ``<!-- test: skip REASON -->`` (never run here: the block
serves forever, say). ``<!-- test: quote FILE -->`` marks a quotation of the repository's code,
not run but checked: each run of its lines between lines of ``...`` is in FILE word for word.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
BLOCK = re.compile(r"^(?:<!-- test: (?P<marker>[^>]*?) -->\n)?```python[^\n]*\n(?P<code>.*?)^```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _blocks(page):
    return [(m["marker"], m["code"], page.read_text()[:m.start()].count("\n") + 1)
            for m in BLOCK.finditer(page.read_text())]


def _data_ready():
    path = os.environ.get("FASTCNN_DATA")
    return bool(path) and (Path(path) / "mnist").is_dir()


def _missing(marker):
    """Why a block with this marker can't run here, or None."""
    if marker is None:
        return None
    what, _, rest = marker.partition(" ")
    if what == "quote":
        return None
    if what == "skip":
        return f"not run by the tests: {rest}"
    if what == "needs" and rest == "data":
        return None if _data_ready() else "needs MNIST: set FASTCNN_DATA to a folder with mnist/ in it"
    if what == "needs":
        return None if importlib.util.find_spec(rest) else f"needs {rest}, which is not installed"
    raise AssertionError(f"unknown test marker {marker!r}: expected 'needs data', 'needs MODULE' or 'skip REASON'")


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__docs__"}
    for marker, code, line in _blocks(page):
        reason = _missing(marker)
        if reason:
            pytest.skip(f"{page.relative_to(ROOT)} line {line} on: {reason}")
        if marker and marker.startswith("quote "):
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the python block at {page.relative_to(ROOT)} line {line} failed: "
                                 f"{type(e).__name__}: {e}") from e


QUOTES = [(page, marker.split(" ", 1)[1], code, line) for page in PAGES for marker, code, line in _blocks(page)
          if marker and marker.startswith("quote ")]


@pytest.mark.parametrize("page,source,code,line", QUOTES, ids=[f"{p.relative_to(ROOT)}:{n}" for p, _, _, n in QUOTES])
def test_quoted_code_is_the_code(page, source, code, line):
    text = (ROOT / source).read_text()
    pieces = re.split(r"^[ \t]*(?:# )?\.\.\.[ \t]*\n", code, flags=re.MULTILINE)
    for piece in pieces:
        assert piece.strip() and piece in text, \
            f"{page.relative_to(ROOT)} line {line} quotes {source}, which no longer has:\n{piece}"


def test_the_site_builds_strictly(tmp_path):
    missing = [name for name in DOCS_PACKAGES if importlib.util.find_spec(name.split(".")[0]) is None]
    if missing:
        pytest.skip(f"the docs' packages are not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)
    assert (tmp_path / "site" / "operations" / "winograd" / "index.html").is_file()


def test_the_cli_page_names_every_command_and_option():
    from fastcnn.cli import parser
    page = (DOCS / "cli.md").read_text()
    commands = next(a for a in parser()._actions if a.choices and isinstance(a.choices, dict)).choices
    missing = []
    for name, sub in commands.items():
        if f"## fastcnn {name}" not in page:
            missing.append(f"a section '## fastcnn {name}'")
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and f"`{option}" not in page:
                    missing.append(f"fastcnn {name} {option}")
    assert not missing, "docs/cli.md does not document: " + ", ".join(missing)


def test_the_architecture_picture_is_what_its_script_draws(tmp_path):
    out = tmp_path / "architecture.svg"
    subprocess.run([sys.executable, str(DOCS / "draw_architecture.py"), str(out)], check=True, timeout=60)
    assert out.read_text() == (DOCS / "architecture.svg").read_text(), \
        "docs/architecture.svg is stale: run python docs/draw_architecture.py docs/architecture.svg"


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    # The two commands, exactly (a fresh machine, then the tests).
    assert 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python train_mnist.py' in text
    assert "\n.venv/bin/pytest\n" in text
