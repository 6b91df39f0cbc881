"""The scripts of benchmarks/ imported as modules, so that tests run their functions with small settings."""

import importlib.util
from pathlib import Path


def benchmark_script(name: str):
    """``benchmarks/{name}.py`` as a module."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
