from pathlib import Path

import pytest
from helpers import SHARED_DATA


def pytest_collection_modifyitems(config, items):
    skip_data = pytest.mark.skip(reason=f"real data folder {SHARED_DATA} is absent")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(pytest.mark.slow)  # real data: the full suite's, not the development tier's
            if not SHARED_DATA.is_dir():
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


@pytest.fixture(scope="session")
def resolved(small_toy):
    """The small toy super-resolved (3 genes, 2 states, 3 epochs): what the plots draw; tests that change it copy it."""
    import spatialdata as sd

    import histex as hx

    sdata = sd.deepcopy(small_toy)
    hx.tl.super_resolve(sdata, epochs=3, n_states=2, genes=["Imm_01", "Epi_01", "Str_01"], show_progress=False)
    return sdata
