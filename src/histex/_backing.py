"""The zarr store behind a SpatialData: whether there is one to write to, and removing an element from it.

Writers that stream into the store (feature maps, super-resolved bins) stage their element under a name with
:data:`STAGING_SUFFIX` while the final name is taken, so that an interrupted run never replaces what was there.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_SUFFIX = "_incomplete"


def is_backed(sdata) -> bool:
    """Whether ``sdata`` was written to or read from a zarr store on disk that new elements can be written to."""
    path = getattr(sdata, "path", None)
    return path is not None and Path(path).is_dir()


def drop_element(sdata, kind: str, name: str, *, from_store: bool) -> None:
    """Remove ``sdata.<kind>[name]`` from memory and, with ``from_store``, from the store (where either holds it)."""
    elements = getattr(sdata, kind)
    if name in elements:
        del elements[name]
    if from_store and f"{kind}/{name}" in sdata.elements_paths_on_disk():
        sdata.delete_element_from_disk(name)


@contextmanager
def quiet_zarr_notices() -> Iterator[None]:
    """Hide zarr's notice about its future sharding default, raised on every array written and not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
        yield
