"""What a HISTEX model reads from a SpatialData: image, bin grid, features, and the spots with their counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from histex import _sdata, geometry
from histex._tables import check_layer
from histex._validation import warn_user
from histex.pp._features import BinFeatures, read_features

logger = logging.getLogger(__name__)


@dataclass
class SectionInputs:
    """One section as the model sees it; ``spots`` is ``None`` for an H&E-only section."""

    image_key: str
    features_key: str
    coordinate_system: str
    shape_yx: tuple[int, int]  # the full-resolution image, pixels
    mpp: float
    mpp_source: str
    grid: geometry.BinGrid
    features: BinFeatures
    encoder: dict | None  # the settings extract_features recorded for the features (model, weights, tiling)
    transformations: dict  # of the image: the bins' placement
    spots: _sdata.Spots | None
    spots_key: str | None
    table_key: str | None
    pitch_px: float | None

    @property
    def name(self) -> str:
        return self.spots_key or self.image_key

    @property
    def spot_rc(self) -> np.ndarray:
        """Spot centres in bin coordinates ``(row, col)``."""
        return self.spots.xy_px[:, ::-1] / self.grid.bin_px

    def describe(self) -> dict:
        """What a model records of a section it was trained on or predicted."""
        return {
            "name": self.name,
            "image_key": self.image_key,
            "features_key": self.features_key,
            "n_spots": 0 if self.spots is None else len(self.spots.xy_px),
            "image_shape": [int(v) for v in self.shape_yx],
            "grid_shape": [int(v) for v in self.grid.shape],
            "n_tissue_bins": int(self.features.tissue.sum()),
            "mpp": float(self.mpp),
        }


def read_inputs(
    sdata,
    *,
    use_spots: bool = True,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    features_key: str | None = None,
    coordinate_system: str | None = None,
    mpp: float | None = None,
    bin_size_um: float = 8.0,
) -> SectionInputs:
    """Find the image, its features and (with ``use_spots``) the spots, and check that they lie on one bin grid.

    Without spots, the pixel size is ``mpp``, or the one :func:`histex.pp.extract_features` recorded.
    """
    spots = pitch = None
    if use_spots:
        section = _sdata.read_section(
            sdata,
            image_key=image_key,
            spots_key=spots_key,
            table_key=table_key,
            coordinate_system=coordinate_system,
            mpp=mpp,
        )
        image_key, cs, shape_yx = section.image_key, section.coordinate_system, section.shape_yx
        mpp, mpp_source, spots, pitch = section.mpp, section.mpp_source, section.spots, section.pitch_px
        spots_key, table_key = section.spots_key, section.table_key
    else:
        image_key = _sdata.find_image_key(sdata, image_key)
        systems = list(_sdata.element_transformations(sdata.images[image_key]))
        cs = coordinate_system or systems[0]
        if cs not in systems:
            raise ValueError(f"Image {image_key!r} is not in coordinate system {cs!r}; its systems: {systems}.")
        image = _sdata.image_array(sdata, image_key)
        shape_yx = (int(image.sizes["y"]), int(image.sizes["x"]))
        spots_key = table_key = None
    features_key, feats = read_features(sdata, image_key, cs, features_key)
    encoder = sdata.attrs.get("histex", {}).get("features", {}).get(features_key)
    if mpp is None:
        if not encoder or not encoder.get("mpp"):
            raise ValueError(
                f"The pixel size of {image_key!r} is unknown without spots: pass mpp=..., or extract the features "
                "with histex.pp.extract_features, which records it."
            )
        mpp, mpp_source = float(encoder["mpp"]), "features"
    elif not use_spots:
        mpp, mpp_source = _sdata.check_mpp(mpp), "argument"
    grid = geometry.BinGrid.for_image(shape_yx, mpp=mpp, bin_size_um=bin_size_um)
    if abs(feats.bin_px / grid.bin_px - 1) > 1e-3 or feats.data.shape[1:] != grid.shape:
        raise ValueError(
            f"Features {features_key!r} lie on bins of {feats.bin_px:.3f} px, but {bin_size_um} µm at {mpp:.4f} µm/px "
            f"is {grid.bin_px:.3f} px. Run histex.pp.extract_features with the same bin_size_um and mpp."
        )
    return SectionInputs(
        image_key=image_key,
        features_key=features_key,
        coordinate_system=cs,
        shape_yx=shape_yx,
        mpp=mpp,
        mpp_source=mpp_source,
        grid=grid,
        features=feats,
        encoder=encoder,
        transformations=_sdata.element_transformations(sdata.images[image_key]),
        spots=spots,
        spots_key=spots_key,
        table_key=table_key,
        pitch_px=pitch,
    )


def count_matrix(table, layer: str | None):
    """The table's counts (``X`` or ``layer``), checked: finite and non-negative. CSR when sparse."""
    check_layer(table, layer)
    matrix = table.layers[layer] if layer is not None else table.X
    matrix = sp.csr_matrix(matrix) if sp.issparse(matrix) else np.asarray(matrix)
    values = matrix.data if sp.issparse(matrix) else matrix
    if not np.isfinite(values).all():
        raise ValueError("The counts contain NaN or infinite values; histex needs raw, finite counts per spot.")
    if (values < 0).any():
        raise ValueError(
            "The counts contain negative values; histex needs raw counts (or non-negative expression), not scaled or "
            "centred data. Pass layer=... to use raw counts."
        )
    return matrix


def dense_counts(table, genes: list[str], layer: str | None) -> np.ndarray:
    """Dense float64 counts of ``genes`` (all present) in the table."""
    matrix = count_matrix(table, layer)
    return _dense(matrix[:, pd.Index(table.var_names.astype(str)).get_indexer(genes)])


def _dense(x) -> np.ndarray:
    return (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float64)


def missing_genes(table, genes: list[str]) -> list[str]:
    """The ``genes`` that the table's ``var_names`` lack, in order."""
    have = set(map(str, table.var_names))
    return [g for g in genes if g not in have]


def select_genes(tables, *, layer, genes, n_top_genes) -> tuple[list[np.ndarray], list[str]]:
    """The genes to predict and each table's dense counts of them.

    ``genes`` must be in every table. Without them, the ``n_top_genes`` most variable of the genes that some spot
    expresses, among the genes all tables share (``seurat_v3`` on counts). Checks and selection run on the stored,
    often sparse, matrices; only the chosen genes are made dense.
    """
    names = [pd.Index(t.var_names.astype(str)) for t in tables]
    if genes is not None:
        genes = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
        for i, table in enumerate(tables):
            missing = missing_genes(table, genes)
            if missing:
                shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
                where = f" of section {i}" if len(tables) > 1 else ""
                raise ValueError(
                    f"{len(missing)} requested gene(s) are not in the table{where}: {shown}. Check var_names."
                )
        return [dense_counts(t, genes, layer) for t in tables], genes
    matrices = [count_matrix(t, layer) for t in tables]
    shared, stacked = names[0], matrices
    if len(tables) > 1:
        if any(not n.is_unique for n in names):
            raise ValueError(
                "Gene names repeat in a table; call adata.var_names_make_unique() on each section's table."
            )
        for var_names in names[1:]:
            shared = shared[shared.isin(var_names)]
        if len(shared) < 0.5 * min(len(n) for n in names):
            raise ValueError(
                f"The sections share only {len(shared)} genes (they have {', '.join(str(len(n)) for n in names)}). "
                "Pass genes=[...] with genes that every section's table has."
            )
        stacked = [m[:, v.get_indexer(shared)] for m, v in zip(matrices, names, strict=True)]
    if len(stacked) == 1:
        x = stacked[0]
    elif any(sp.issparse(m) for m in stacked):
        x = sp.vstack([sp.csr_matrix(m) for m in stacked]).tocsr()
    else:
        x = np.vstack(stacked)
    cols = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)  # genes no spot expresses teach nothing
    if n_top_genes < len(cols):
        cols = cols[_highly_variable(x[:, cols], n_top_genes)]
    chosen = [str(shared[c]) for c in cols]
    return [_dense(m[:, cols]) for m in stacked], chosen


def _highly_variable(x, n_top: int) -> np.ndarray:
    """Column indices of the ``n_top`` most variable genes: scanpy's seurat_v3 on counts, variance otherwise."""
    import anndata as ad
    import scanpy as sc

    values = x.data if sp.issparse(x) else x
    if np.array_equal(values, np.round(values)):
        adata = ad.AnnData(x.astype(np.float32))
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top)
        rank = adata.var["highly_variable_rank"].to_numpy()
        return np.sort(np.argsort(np.where(np.isnan(rank), np.inf, rank), kind="stable")[:n_top])
    warn_user(
        "The counts are not integers (normalised data?); choosing genes by variance instead of seurat_v3. Pass raw "
        "counts to choose them as scanpy's seurat_v3 does."
    )
    mean = np.asarray(x.mean(axis=0)).ravel()
    mean_sq = np.asarray(x.multiply(x).mean(axis=0)).ravel() if sp.issparse(x) else (x**2).mean(axis=0)
    return np.sort(np.argsort(-(mean_sq - mean**2), kind="stable")[:n_top])


def has_spots(sdata, spots_key, table_key, genes, layer) -> bool:
    """Whether the section has spots whose table holds every gene of the model (for ``use_spots="auto"``)."""
    try:
        _, table_key = _sdata.find_spots(sdata, spots_key, table_key)
    except (ValueError, KeyError):
        return False
    table = sdata.tables[table_key]
    if layer is not None and layer not in table.layers:
        return False
    missing = missing_genes(table, genes)
    if missing:
        logger.warning(
            "The spot table %r lacks %d of the model's %d genes: predicting from the image alone.",
            table_key, len(missing), len(genes),
        )  # fmt: skip
        return False
    return True


def log_section(inputs: SectionInputs, n_genes: int) -> None:
    """One log line of what was found in a section."""
    logger.info(
        "Image %r, spots %r (%d), table %r, %d genes; %.4f µm/px from the %s; %d x %d bins of %g µm, %d in tissue.",
        inputs.image_key,
        inputs.spots_key,
        0 if inputs.spots is None else len(inputs.spots.xy_px),
        inputs.table_key,
        n_genes,
        inputs.mpp,
        inputs.mpp_source,
        *inputs.grid.shape,
        inputs.grid.bin_px * inputs.mpp,
        int(inputs.features.tissue.sum()),
    )
