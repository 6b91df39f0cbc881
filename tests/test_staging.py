"""Staging elements in a zarr store: a run that fails at any step leaves the old element whole under its name."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import spatialdata as sd
from spatialdata.models import ShapesModel
from spatialdata.transformations import Identity

from histex._backing import STAGING_SUFFIX, Staging


def _squares(n: int):
    boxes = [shapely.box(i, 0, i + 1, 1) for i in range(n)]
    return ShapesModel.parse(gpd.GeoDataFrame(geometry=boxes), transformations={"cs": Identity()})


@pytest.fixture
def backed(tmp_path):
    sdata = sd.SpatialData(shapes={"bins": _squares(3)})
    sdata.write(tmp_path / "s.zarr")
    return sd.read_zarr(tmp_path / "s.zarr")


def _on_disk(sdata) -> set[str]:
    return {p.name for p in (Path(sdata.path) / "shapes").iterdir() if p.is_dir()}


def test_commit_replaces_and_leaves_nothing_aside(backed):
    staging = Staging(backed)
    assert staging.stage("shapes", "bins", _squares(5)) == f"bins{STAGING_SUFFIX}"
    assert staging.replaces("shapes", "bins") and len(backed.shapes["bins"]) == 3  # old one untouched until commit
    staging.commit()
    assert _on_disk(backed) == {"bins"} and "bins" not in backed.shapes
    assert len(sd.read_zarr(backed.path).shapes["bins"]) == 5


def test_an_interrupted_run_leaves_no_element_under_the_final_name(backed):
    staging = Staging(backed)
    staging.stage("shapes", "new", _squares(4))
    assert not staging.replaces("shapes", "new") and "new" not in _on_disk(backed)
    staging.abort()
    assert _on_disk(backed) == {"bins"} and set(backed.shapes) == {"bins"}


def test_a_failed_move_puts_the_old_element_back(backed, monkeypatch):
    staging = Staging(backed)
    staging.stage("shapes", "bins", _squares(5))
    real_rename = Path.rename

    def rename(self, target):
        if self.name.endswith(STAGING_SUFFIX):
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        staging.commit()
    monkeypatch.undo()
    staging.abort()  # what the writers do on an error
    assert _on_disk(backed) == {"bins"}
    np.testing.assert_array_equal(sd.read_zarr(backed.path).shapes["bins"].bounds.maxx, [1, 2, 3])
