"""Simulated sections with known truth: high-resolution data summed into pseudo-Visium spots (the benchmark protocol).

:func:`from_nuclei` paints expression onto real tissue architecture (an H&E image and its segmented nuclei);
:func:`paint_he` paints an H&E-like image from nucleus and tissue-region polygons (or a :class:`TissueLabels` raster),
for slides that have no image;
:func:`vary_stain` changes the strength of its haematoxylin and eosin; :func:`cell_bin_weights` splits cells over
the bins they overlap; :func:`hex_spots` and :func:`sum_into_spots` make the pseudo-spots; :func:`visium_like` lays
the result out as ``spatialdata_io.visium`` does, with the truth table; :func:`write_spaceranger` writes it as
Space Ranger's ``outs/``.
"""

from histex.geometry import cell_bin_weights, points_to_bins
from histex.sim._layout import visium_like
from histex.sim._nuclei import draw_programmes, from_nuclei
from histex.sim._paint import TissueLabels, paint_he
from histex.sim._pseudo import hex_spots, sum_into_spots
from histex.sim._spaceranger import write_spaceranger
from histex.sim._stain import vary_stain
from histex.sim._visium_hd import from_visium_hd
from histex.sim._xenium import from_xenium

__all__ = [
    "TissueLabels",
    "cell_bin_weights",
    "draw_programmes",
    "from_nuclei",
    "from_visium_hd",
    "from_xenium",
    "hex_spots",
    "paint_he",
    "points_to_bins",
    "sum_into_spots",
    "vary_stain",
    "visium_like",
    "write_spaceranger",
]
