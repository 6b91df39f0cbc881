"""Time what follows super-resolution on a whole-slide number of bins: domains, enrichment, spatial patterns, plots.

    python benchmarks/downstream.py [--side 1000] [--genes 100] [--out DIR]
    python benchmarks/downstream.py --hd [--side 1000]

Builds a SpatialData like the one ``histex.tl.super_resolve`` leaves (a side x side grid of 8 µm bins, 1,000,000 by
default, with predicted counts, a 64-d embedding, the Visium spots summed from the bins, and a lazy multiscale H&E
at 0.5 µm per pixel), with eight planted domains, each with its own programme of genes and a gene set for it. Then
prints the seconds and peak memory of ``histex.tl.annotate``, ``histex.tl.enrich`` (ORA and ULM),
``histex.tl.spatial_patterns`` and the plots ``histex.pl.domains`` and ``histex.pl.enrichment``, and checks that
each domain's planted set ranks first in it.

With ``--hd`` the table is a Visium HD-like one instead: sparse counts of 18,000 genes (about 150 UMIs per bin drawn
from a long-tailed gene distribution, plus 30 from the 20 genes of the bin's domain), and only ``annotate`` on the
expression and ``enrich`` are timed, to show that neither makes the table dense.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, TableModel
from spatialdata.transformations import Identity

import histex as hx
from histex._memory import peak_rss_mb
from histex.geometry import BinGrid
from histex.sim import hex_spots, sum_into_spots

BIN_UM = 8.0
MPP = 0.5
N_DOMAINS = 8


def planted_domains(side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows and columns of a side x side grid, and each bin's domain: the nearest of eight random seeds."""
    rows, cols = np.divmod(np.arange(side * side), side)
    seeds = rng.uniform(0, side, size=(N_DOMAINS, 2))
    domain = np.zeros(rows.size, np.int64)
    best = np.full(rows.size, np.inf)
    for k, (r, c) in enumerate(seeds):  # one seed at a time: no bins x seeds matrix
        d2 = (rows - r) ** 2 + (cols - c) ** 2
        domain[d2 < best] = k
        np.minimum(best, d2, out=best)
    return rows, cols, domain


def bin_obs(rows: np.ndarray, cols: np.ndarray, domain: np.ndarray, region: str) -> pd.DataFrame:
    """The obs of a bin table: grid position, region and instance, and the planted domain."""
    return pd.DataFrame(
        {
            "array_row": rows,
            "array_col": cols,
            "region": pd.Categorical([region] * rows.size),
            "instance_id": np.arange(rows.size),
            "planted": pd.Categorical(domain.astype(str)),
        },
        index=pd.RangeIndex(rows.size).astype(str),
    )


def planted_section(side: int, n_genes: int, *, seed: int = 0) -> tuple[SpatialData, dict[str, list[str]]]:
    """A bin table with planted domains (nearest of eight seeds, so irregular convex regions), its spots and H&E."""
    rng = np.random.default_rng(seed)
    rows, cols, domain = planted_domains(side, rng)
    genes = [f"G{j:04d}" for j in range(n_genes)]
    per_domain = n_genes // (N_DOMAINS + 2)  # the rest are expressed alike everywhere
    rate = np.full((N_DOMAINS, n_genes), 0.5, np.float32)
    sets = {}
    for k in range(N_DOMAINS):
        own = slice(k * per_domain, (k + 1) * per_domain)
        rate[k, own] = 4.0
        sets[f"PATHWAY_{k}"] = genes[own]
    counts = rng.poisson(rate[domain]).astype(np.float32)
    embedding = rng.normal(size=(side * side, 64)).astype(np.float32)
    embedding[:, :N_DOMAINS] += 2 * np.eye(N_DOMAINS, dtype=np.float32)[domain]
    obs = bin_obs(rows, cols, domain, "histex_bins")
    bin_px = BIN_UM / MPP
    centres = np.column_stack([(cols + 0.5) * bin_px, (rows + 0.5) * bin_px])
    table = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=genes), obsm={"X_histex": embedding, "spatial": centres})
    table = TableModel.parse(table, region="histex_bins", region_key="region", instance_key="instance_id")

    grid = BinGrid(bin_px=bin_px, n_rows=side, n_cols=side)
    spots_xy, spots_rc = hex_spots(np.ones((side, side), bool), grid, MPP)
    spot_counts = sum_into_spots(spots_xy, grid, rows, cols, counts, radius_px=27.5 / MPP)
    image = da.full((3, side * int(bin_px), side * int(bin_px)), 200, dtype=np.uint8, chunks=(3, 4096, 4096))
    he = Image2DModel.parse(image, dims=("c", "y", "x"), scale_factors=[4, 4], transformations={"global": Identity()})
    with warnings.catch_warnings():  # the bins' shapes are left out: the plots rasterise the table
        warnings.filterwarnings("ignore", message=".*which is not present in the SpatialData.*")
        sdata = SpatialData(images={"he": he}, tables={"histex": table})
    spots_obs = pd.DataFrame({"array_row": spots_rc[:, 0], "array_col": spots_rc[:, 1]})
    spots_obs.index = spots_obs.index.astype(str)
    sdata.tables["spots"] = ad.AnnData(
        spot_counts, obs=spots_obs, var=pd.DataFrame(index=genes), obsm={"spatial": spots_xy}
    )
    table.uns["histex"] = {
        "data": {
            "image_key": "he",
            "bin_px": bin_px,
            "grid_shape": [side, side],
            "coordinate_system": "global",
            "table_key": "spots",
        }
    }
    return sdata, sets


def hd_section(side: int, n_genes: int = 18_000, *, umis: int = 150, seed: int = 0):
    """A sparse bin table of every gene, like a Visium HD one, with eight planted domains and their gene sets."""
    rng = np.random.default_rng(seed)
    n = side * side
    rows, cols, domain = planted_domains(side, rng)
    weight = rng.pareto(1.2, n_genes) + 0.01  # a few genes take most of the counts, as in real data
    per_bin = rng.poisson(umis, n)
    background = rng.choice(n_genes, size=per_bin.sum(), p=weight / weight.sum()).astype(np.int32)
    planted = (1000 + 20 * domain[:, None] + rng.integers(0, 20, size=(n, 30))).astype(np.int32)
    owner = np.concatenate([np.repeat(np.arange(n), per_bin), np.repeat(np.arange(n), 30)])
    genes_of = np.concatenate([background, planted.ravel()])
    counts = sp.csr_matrix((np.ones(owner.size, np.float32), (owner, genes_of)), shape=(n, n_genes))
    counts.sum_duplicates()
    genes = [f"G{j:05d}" for j in range(n_genes)]
    obs = bin_obs(rows, cols, domain, "hd_bins")
    table = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=genes))
    table = TableModel.parse(table, region="hd_bins", region_key="region", instance_key="instance_id")
    sets = {f"PATHWAY_{k}": genes[1000 + 20 * k : 1020 + 20 * k] for k in range(N_DOMAINS)}
    with warnings.catch_warnings():  # the bins' shapes are left out: only the table is timed
        warnings.filterwarnings("ignore", message=".*which is not present in the SpatialData.*")
        return SpatialData(tables={"hd": table}), sets


def timed(label: str, func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    print(f"{label:<34s} {time.perf_counter() - start:8.1f} s   peak RSS {peak_rss_mb():8.0f} MiB", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=1000, help="bins per side (1000: 1,000,000 bins)")
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("downstream_bench"))
    parser.add_argument("--hd", action="store_true", help="a sparse table of 18,000 genes, as Visium HD")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import adjusted_rand_score

    if args.hd:
        hd(args.side)
        return
    sdata, sets = timed("build section", planted_section, args.side, args.genes)
    table = sdata.tables["histex"]
    print(f"{table.n_obs:,} bins x {table.n_vars} genes, {sdata.tables['spots'].n_obs:,} spots")
    timed("annotate (embedding, k-means)", hx.tl.annotate, sdata, n_domains=N_DOMAINS)
    ari = adjusted_rand_score(table.obs["planted"], table.obs["domain"])
    print(f"  adjusted Rand index against the planted domains: {ari:.3f}")
    timed(
        "annotate (expression, k-means)", hx.tl.annotate, sdata, n_domains=N_DOMAINS, use="expression", key_added="d2"
    )
    for method in ("ora", "ulm"):
        result = timed(f"enrich ({method})", hx.tl.enrich, sdata, gene_sets=sets, groupby="planted", method=method)
        best = result[result["rank"] == 1].set_index("group")["term"]
        hits = sum(best.get(str(k)) == f"PATHWAY_{k}" for k in range(N_DOMAINS))
        print(f"  planted set first in {hits} of {N_DOMAINS} domains")
    if hasattr(hx.tl, "spatial_patterns"):
        timed("spatial_patterns (bins and spots)", hx.tl.spatial_patterns, sdata, genes=list(table.var_names[:20]))
    ax = timed("pl.domains (H&E beneath)", hx.pl.domains, sdata, show=False, save=args.out / "domains.png")
    plt.close(ax.figure)
    ax = timed("pl.enrichment", hx.pl.enrichment, sdata, show=False, save=args.out / "enrichment.png")
    plt.close(ax.figure)


def hd(side: int) -> None:
    from sklearn.metrics import adjusted_rand_score

    sdata, sets = timed("build sparse section", hd_section, side)
    table = sdata.tables["hd"]
    print(f"{table.n_obs:,} bins x {table.n_vars:,} genes, {table.X.nnz:,} non-zeros")
    timed("annotate (expression, k-means)", hx.tl.annotate, sdata, "hd", n_domains=N_DOMAINS, use="expression")
    ari = adjusted_rand_score(table.obs["planted"], table.obs["domain"])
    print(f"  adjusted Rand index against the planted domains: {ari:.3f}")
    for method in ("ora", "ulm"):
        result = timed(
            f"enrich ({method})", hx.tl.enrich, sdata, "hd", gene_sets=sets, groupby="planted", method=method
        )
        best = result[result["rank"] == 1].set_index("group")["term"]
        hits = sum(best.get(str(k)) == f"PATHWAY_{k}" for k in range(N_DOMAINS))
        print(f"  planted set first in {hits} of {N_DOMAINS} domains")


if __name__ == "__main__":
    main()
