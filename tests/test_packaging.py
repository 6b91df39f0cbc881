"""What the package declares: every library it imports, its licence, its type information."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import histex

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``"torch>=2.4,<=2.14.1"`` -> ``"torch"``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _imported_modules() -> set[str]:
    """Top-level modules that the package's source imports (absolute imports, anywhere in a module)."""
    found = set()
    for path in (ROOT / "src" / "histex").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"histex", "__future__"}


def test_every_imported_library_is_declared():
    declared = {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_modules()):
        distributions = {_name(d) for d in providers.get(module, [module])}
        if not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"
    # the check sees the imports it should: a few that the package is known to make
    assert {"torch", "spatialdata", "sklearn", "PIL", "pyarrow", "distributed"} <= _imported_modules()


def test_licence_and_type_information():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "BSD-3-Clause"
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("BSD 3-Clause License") and "histex developers" in licence
    assert (Path(histex.__file__).parent / "py.typed").is_file()
