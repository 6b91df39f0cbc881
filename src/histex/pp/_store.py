"""Where the blocks of a feature map go: a zarr array in the SpatialData's own store when it is backed, else memory.

Until :meth:`FeatureStore.finish`, ``sdata`` shows nothing new and loses nothing: on a backed store the blocks are
written to a staged element (:class:`histex._backing.Staging`), which replaces an old one of its name only at the
end; :meth:`FeatureStore.abort` removes whatever was staged.
"""

from __future__ import annotations

import logging

import numpy as np

from histex._backing import Staging, drop_element, is_backed

logger = logging.getLogger(__name__)


class FeatureStore:
    """A ``(channels, rows, cols)`` float32 feature map and its tissue mask, written block by block.

    Parameters
    ----------
    sdata
        The SpatialData that receives ``images[key]`` and ``labels[mask_key]``.
    names
        Channel names.
    shape_yx
        Bins of the grid.
    transformations
        Transformations of both elements (the bin grid on the image).
    chunk
        Zarr chunk edge in bins (blocks are multiples of it).
    """

    def __init__(self, sdata, key: str, mask_key: str, names: list[str], shape_yx, transformations, chunk: int):
        self.sdata, self.key, self.mask_key, self.names = sdata, key, mask_key, names
        self.transformations = transformations
        self.shape = (len(names), *shape_yx)
        self.chunks = (len(names), min(chunk, shape_yx[0]), min(chunk, shape_yx[1]))
        self.rgb = np.zeros((3, *shape_yx), dtype=np.float32)
        self.backed = is_backed(sdata)
        self.staging = Staging(sdata) if self.backed else None
        self.array = None

    def open(self) -> None:
        """Allocate the map: in memory, or as an element of zeros in the store (zero chunks are not written)."""
        if not self.backed:
            self.array = np.zeros(self.shape, dtype=np.float32)
            return
        import dask.array as da

        zeros = self._element(da.zeros(self.shape, chunks=self.chunks, dtype=np.float32))
        self.staging.stage("images", self.key, zeros)
        self.array = self._zarr_array()
        logger.info("Writing the features into the SpatialData's store %s.", self.sdata.path)

    def write(self, bounds, feats: np.ndarray, rgb: np.ndarray) -> None:
        r0, r1, c0, c1 = bounds
        self.array[:, r0:r1, c0:c1] = np.concatenate([feats, rgb.astype(np.float32)], axis=0)
        self.rgb[:, r0:r1, c0:c1] = rgb

    def finish(self, mask: np.ndarray, attrs: dict[str, dict]) -> None:
        """Put the map and the mask in place (replacing earlier ones) and record ``attrs`` under
        ``sdata.attrs["histex"][name][key]``.
        """
        import dask.array as da
        from spatialdata.models import Labels2DModel

        if self.backed:
            self.staging.commit()
            self.sdata.images[self.key] = self._element(da.from_zarr(self._zarr_array()))
        else:
            self._drop(self.key, "images")
            self.sdata.images[self.key] = self._element(da.from_array(self.array, chunks=self.chunks))
        self._drop(self.mask_key, "labels")
        self.sdata.labels[self.mask_key] = Labels2DModel.parse(
            mask.astype(np.uint8), dims=("y", "x"), transformations=dict(self.transformations)
        )
        histex_attrs = self.sdata.attrs.setdefault("histex", {})
        for name, value in attrs.items():
            histex_attrs.setdefault(name, {})[self.key] = value
        if self.backed:
            self.sdata.write_element(self.mask_key)
            self.sdata.write_attrs()

    def abort(self) -> None:
        """Remove what was staged; ``sdata`` and its store are as they were."""
        if self.staging is not None:
            self.staging.abort()

    def _element(self, data):
        from spatialdata.models import Image2DModel

        return Image2DModel.parse(
            data, dims=("c", "y", "x"), c_coords=self.names, transformations=dict(self.transformations)
        )

    def _drop(self, name: str, kind: str) -> None:
        drop_element(self.sdata, kind, name, from_store=self.backed)

    def _zarr_array(self):
        """The map's level-0 zarr array where it is now (staged, or in place after the commit)."""
        import zarr

        group = zarr.open_group(str(self.staging.path("images", self.key)), mode="r+")
        attrs = group.attrs.asdict()
        multiscales = attrs.get("ome", attrs)["multiscales"]
        return group[multiscales[0]["datasets"][0]["path"]]
