"""What the tests share: the real data's folder, checks that an sdata was left alone, the toy's markers, and the
scripts of benchmarks/ imported as modules (so that tests run their functions with small settings)."""

import importlib.util
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def compartment_markers(table) -> dict[str, list[str]]:
    """The toy's marker genes of stroma, epithelium, immune aggregates and tumour, by their name prefix."""
    groups = table.var["group"]
    return {g: table.var_names[groups == g].tolist() for g in ["Str", "Epi", "Imm", "Tum"]}


def fingerprint(sdata) -> dict:
    """What a failed or successful call must leave alone: element keys and the content of the input elements."""
    import numpy as np

    out = {"keys": sorted(str(k) for k in sdata.elements_paths_in_memory())}
    for key, table in sdata.tables.items():
        x = table.X
        out[f"table:{key}"] = (
            table.shape,
            float(np.nansum(x.toarray() if hasattr(x, "toarray") else x)),
            tuple(table.obs.columns),
            table.obs.index.tolist()[:5],
            tuple(table.uns.keys()),
        )
    for key, gdf in sdata.shapes.items():
        out[f"shapes:{key}"] = (len(gdf), tuple(gdf.columns), float(gdf.geometry.bounds.to_numpy().sum()))
    for key in sdata.images:
        from histex._sdata import image_array

        img = image_array(sdata, key)
        out[f"image:{key}"] = (tuple(img.shape), float(np.asarray(img.data[:, ::37, ::37]).sum()))
    return out


def benchmark_script(name: str):
    """``benchmarks/{name}.py`` as a module."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
