"""Data sets for tests, tutorials and benchmarks.

:func:`toy` builds a procedural Visium section (H&E-like image, spot circles, spot counts) in the layout that
:func:`spatialdata_io.visium` produces, together with its ground truth on 8 µm bins, so that super-resolution can be
checked against the truth rather than only run.
"""

from histex.datasets._toy import COMPARTMENTS, toy

__all__ = ["COMPARTMENTS", "toy"]
