"""What the tests share: the real data's folder, checks that an sdata was left alone, the toy's markers, the
scripts of benchmarks/ imported as modules (so that tests run their functions with small settings), and small
array tools that only tests need (bin means and labels of a whole image, an encoder run over an in-memory image)."""

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


def bin_means(image, grid):
    """Mean of each channel of an ``(y, x, c)`` image over the pixels each bin claims, as ``(c, n_rows, n_cols)``."""
    from histex.geometry import region_bin_means

    return region_bin_means(image, (0, 0), grid.bin_px, (0, grid.n_rows), (0, grid.n_cols))


def pixel_labels(grid, shape_yx):
    """Flat bin index (``row * n_cols + col``) of every image pixel, -1 where no complete bin claims it."""
    import numpy as np

    rows = grid.bin_of_pixel(np.arange(shape_yx[0]), grid.n_rows)
    cols = grid.bin_of_pixel(np.arange(shape_yx[1]), grid.n_cols)
    labels = rows[:, None] * grid.n_cols + cols[None, :]
    labels[(rows[:, None] < 0) | (cols[None, :] < 0)] = -1
    return labels


def encode_image(image, grid, encoder, *, mpp, bin_size_um, n_shifts=1, batch_size=8, show_progress=False):
    """Run an encoder over an in-memory ``(y, x, 3)`` uint8 image through the tiling extract_features uses;
    ``(n_features, rows, cols)`` on the bin grid."""
    import numpy as np

    from histex.pp._tiling import ImageSource, encode_blocks

    source = ImageSource(levels=[np.asarray(image).transpose(2, 0, 1)], factors=[1], mpp=mpp)
    out = np.zeros((len(encoder.feature_names), grid.n_rows, grid.n_cols), dtype=np.float32)

    def sink(bounds, feats, rgb):
        r0, r1, c0, c1 = bounds
        out[:, r0:r1, c0:c1] = feats

    encode_blocks(source, grid, encoder, working_mpp=bin_size_um / encoder.patch_size, n_shifts=n_shifts,
                  batch_size=batch_size, sink=sink, show_progress=show_progress)  # fmt: skip
    return out


def figure_of(axes):
    """The figure of what a histex plot returns with ``show=False``: one Axes, or an array of them."""
    import numpy as np

    return axes.figure if hasattr(axes, "figure") else np.asarray(axes).flat[0].figure
