"""Parameter descriptions that several public functions share, written once.

A docstring names one with a line ``{name}`` (alone, at the parameters' indentation); :func:`shared_docs` puts the
description there. Braces elsewhere in a docstring are left alone.
"""

from __future__ import annotations

import re
from textwrap import dedent, indent

PARAMS: dict[str, str] = {
    "section_keys": """
        image_key, spots_key, table_key, features_key, coordinate_system
            Elements of the section (the H&E, the spot circles, their counts table, the image features from
            :func:`histex.pp.extract_features`) and the coordinate system they share; each is found when
            unambiguous.
        """,
    "mpp": """
        mpp
            Microns per pixel of the full-resolution image; by default from the reader's metadata or the spot
            lattice.
        """,
    "bin_size_um": """
        bin_size_um
            Bin edge in µm; must match the features.
        """,
    "spot_diameter_um": """
        spot_diameter_um
            Diameter of a spot's capture area, whose bins the disk loss averages (55 µm on Visium). The spot
            circles' radius is not used for this: Space Ranger draws them at 65 µm.
        """,
    "genes": """
        genes
            Genes to predict, a list of distinct names present in every section; default the ``n_top_genes`` most
            variable of the genes all sections share (``seurat_v3`` on the spot counts).
        n_top_genes
            Number of highly variable genes when ``genes`` is not given.
        """,
    "layer": """
        layer
            Layer of the spot table that holds the counts; default ``X``.
        """,
    "device": """
        device
            ``"cpu"``, ``"cuda"`` (or ``"cuda:1"``), ``"mps"``; ``None`` picks cuda, then mps, then cpu.
        """,
    "precision": """
        precision
            ``"auto"``: bfloat16 where the hardware computes it natively (CUDA GPUs that support it, CPUs with AMX
            or AVX-512 BF16 units), float32 elsewhere; ``"float32"``; ``"bfloat16"``; ``"float16"`` (encoders
            only: it cannot train).
        """,
    "show_progress": """
        show_progress
            Show progress bars.
        """,
    "ax": """
        ax
            Matplotlib axes to draw into; ``None``: a new figure.
        """,
    "ax_grid": """
        ax
            Matplotlib axes to draw into, one per panel (genes x panels, row by row: any array or list of them);
            ``None``: a new figure.
        """,
    "show_save": """
        show
            Show the figure (``plt.show()``) and return ``None``; ``None``: when the plot made its own figure (no
            ``ax``). ``False`` returns the axes.
        save
            Path to save the figure to (at 120 dpi).
        """,
    "key_added": """
        key_added
            Name of the output table; the bins are ``shapes[f"{key_added}_bins"]``. An earlier histex result of
            that name is replaced; another element of that name is an error.
        """,
}

_MARKER = re.compile(r"^(?P<indent>[ ]*)\{(?P<name>[a-z_]+)\}[ ]*$", re.MULTILINE)


def shared_docs(function):
    """Fill the ``{name}`` lines of ``function``'s docstring with :data:`PARAMS`' descriptions."""

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in PARAMS:
            raise KeyError(f"No shared description {name!r} for {function.__qualname__}; known: {sorted(PARAMS)}.")
        return indent(dedent(PARAMS[name]).strip("\n"), match.group("indent"))

    if function.__doc__:
        function.__doc__ = _MARKER.sub(fill, function.__doc__)
    return function
