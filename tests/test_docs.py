"""The documentation cannot rot: every tutorial executes on the CPU, and the site builds offline with warnings as
errors, with the API reference, the tutorials and their figures in it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))


def test_every_tutorial_is_in_the_table_of_contents():
    toc = (ROOT / "docs" / "tutorials.md").read_text()
    assert NOTEBOOKS, "no tutorials"
    for notebook in NOTEBOOKS:
        assert re.search(rf"^tutorials/{notebook.stem}$", toc, flags=re.MULTILINE), notebook.name


def _reads_real_data(notebook: Path) -> bool:
    """Tutorials on the real files of ../shared/data skip with the other real-data tests when it is absent."""
    return "shared/data" in notebook.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "notebook",
    [pytest.param(nb, marks=[pytest.mark.realdata] if _reads_real_data(nb) else []) for nb in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_tutorial_executes(notebook):
    """Run the notebook top to bottom in a fresh kernel, from tutorials/ as a reader would; a cell that raises fails
    the test. The stored outputs must be an execution of the same cells: every code cell has run, in order."""
    import nbformat
    from nbclient import NotebookClient

    stored = nbformat.read(notebook, as_version=4)
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "store the notebook executed"
    assert not any(out.get("output_type") == "error" for cell in code for out in cell.outputs)
    fresh = nbformat.read(notebook, as_version=4)
    NotebookClient(
        fresh, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    ).execute()
    assert _figures(fresh) == _figures(stored) > 0


def _figures(notebook) -> int:
    """PNG outputs of the notebook's code cells."""
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return sum("image/png" in out.get("data", {}) for cell in cells for out in cell.outputs)


def public_functions() -> list[str]:
    """``histex.<namespace>.<function>`` for the user-facing namespaces (their ``__all__``, or for ``metrics`` the
    functions it defines)."""
    import importlib
    import inspect

    names = []
    for namespace in ["datasets", "pp", "tl", "pl", "sim", "metrics"]:
        module = importlib.import_module(f"histex.{namespace}")
        members = getattr(module, "__all__", None) or [
            n for n, f in inspect.getmembers(module, inspect.isfunction) if f.__module__ == module.__name__
        ]
        names += [
            f"{module.__name__}.{n}"
            for n in members
            if not n.startswith("_") and inspect.isfunction(getattr(module, n))
        ]
    return names


@pytest.mark.slow
def test_site_builds_offline_without_warnings(tmp_path):
    html = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(html)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    for page in ["index", "installation", "benchmark", "api", "changelog", "tutorials"]:
        assert (html / f"{page}.html").is_file(), page
    # the API reference: a page for every public function of the namespaces, its numpydoc parameters rendered
    assert not set(public_functions()) - {p.stem for p in (html / "generated").glob("*.html")}
    api = html / "generated" / "histex.tl.super_resolve.html"
    text = api.read_text()
    assert "key_added" in text and "to_store" in text and "Parameters" in text
    assert ":param" not in text and "``" not in text  # no raw markup
    # the tutorials, with their figures as images
    for notebook in NOTEBOOKS:
        page = (html / "tutorials" / f"{notebook.stem}.html").read_text()
        assert page.count("<img") >= 1, notebook.stem
        assert "Traceback" not in page
