"""Checks on real files from ../shared/data (skipped when the folder is absent; CI has it)."""

import numpy as np
import pytest
import spatialdata as sd
from helpers import fingerprint

import histex as hx

pytestmark = pytest.mark.realdata


def test_spaceranger_folder_without_full_resolution_image_is_refused(shared_data):
    """Space Ranger 1.0.0 output read by spatialdata_io has only hires/lowres images: ask for the full one."""
    spatialdata_io = pytest.importorskip("spatialdata_io")
    sdata = spatialdata_io.visium(
        shared_data / "visium_spaceranger_1.0.0", dataset_id="v1", counts_file="filtered_feature_bc_matrix.h5"
    )
    before = fingerprint(sdata)
    with pytest.raises(ValueError, match=r"need the full-resolution image.*fullres_image_file"):
        hx.tl.super_resolve(sdata, epochs=1, n_states=1, show_progress=False)
    with pytest.raises(ValueError, match="need the full-resolution image"):
        hx.pp.extract_features(sdata, show_progress=False)
    assert fingerprint(sdata) == before


def _mouse_brain(shared_data):
    """The squidpy Visium crop in the layout of spatialdata_io.visium: real H&E, real spots."""
    import anndata as ad
    from PIL import Image
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    adata = ad.read_h5ad(shared_data / "visium_mouse_brain_crop.h5ad")
    image = np.asarray(Image.open(shared_data / "visium_mouse_brain_crop_he.jpg").convert("RGB")).transpose(2, 0, 1)
    scalefactors = adata.uns["spatial"]["V1_Adult_Mouse_Brain"]["scalefactors"]
    adata.obs["spot_id"] = np.arange(adata.n_obs)
    adata.obs["region"] = "crop"
    circles = ShapesModel.parse(
        adata.obsm["spatial"].astype(float),
        geometry=0,
        radius=scalefactors["spot_diameter_fullres"] / 2,
        index=adata.obs["spot_id"].copy(),
        transformations={"crop": Identity()},
    )
    return sd.SpatialData(
        images={
            "crop_full_image": Image2DModel.parse(image, dims=("c", "y", "x"), transformations={"crop": Identity()})
        },
        shapes={"crop": circles},
        tables={"table": TableModel.parse(adata, region="crop", region_key="region", instance_key="spot_id")},
    )


def test_mouse_brain_crop_end_to_end(shared_data, caplog):
    """Real H&E and spots: mpp from the lattice (about 0.73 µm/px, not the 0.615 that a 55 µm reading of
    spot_diameter_fullres would give), 55 µm disks for the loss, features, a tissue mask that holds the spots, and
    bins predicted under them."""
    sdata = _mouse_brain(shared_data)
    hx.pp.extract_features(sdata, show_progress=False)
    tissue = np.asarray(sdata.labels["crop_full_image_texture_tissue"].data) > 0
    assert 0.3 < tissue.mean() < 1.0
    with caplog.at_level("INFO", logger="histex"):
        hx.tl.super_resolve(sdata, epochs=2, n_states=1, n_top_genes=20, show_progress=False, device="cpu")
    assert "describes a 65 µm spot" in caplog.text
    table = sdata.tables["histex"]
    meta = table.uns["histex"]["data"]
    assert meta["mpp"] == pytest.approx(0.73, abs=0.01)
    assert "lattice pitch" in meta["mpp_source"]
    # the circles are Space Ranger's 65 µm; the loss averages the bins of the 55 µm capture area: 7 x 7 windows
    assert meta["circle_diameter_um"] == pytest.approx(65, abs=1.5)
    assert meta["radius_bins"] == pytest.approx(27.5 / 8)
    assert table.uns["histex"]["params"]["window"] == 7
    assert meta["bins_per_spot"] == pytest.approx(37, abs=1.5)
    assert table.n_vars == 20 and np.isfinite(table.X).all() and (table.X >= 0).all()
    # every spot centre lies on a predicted bin: the tissue mask keeps the measured tissue
    bin_px = float(meta["bin_px"])
    spot_bins = set(map(tuple, np.floor(sdata.tables["table"].obsm["spatial"][:, ::-1] / bin_px).astype(int)))
    predicted = set(zip(table.obs["array_row"], table.obs["array_col"], strict=True))
    assert len(spot_bins & predicted) >= 0.9 * len(spot_bins)
