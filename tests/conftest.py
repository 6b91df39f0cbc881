from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    skip_data = pytest.mark.skip(reason=f"real data folder {SHARED_DATA} is absent")
    for item in items:
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)
        if "gpu" in item.keywords:
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_toy():
    """A small toy section with features, built once; tests that change it take a deep copy."""
    import histex as hx

    sdata = hx.datasets.toy(size_um=720, n_genes=40, seed=1)
    hx.pp.extract_features(sdata, show_progress=False)
    return sdata


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
