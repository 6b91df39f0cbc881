"""The zarr store behind a SpatialData: whether there is one to write to, removing an element from it, and staging
new elements so that an interrupted run never replaces what was there.

Writers that stream into the store (feature maps, super-resolved bins) write their elements with spatialdata's
``write_element`` under a name with :data:`STAGING_SUFFIX` while the final name is taken (:class:`Staging`), and
put them in place only when complete: the old element is deleted with ``delete_element_from_disk`` and the staged
one takes its name. spatialdata has no way to rename an element on disk, and copying a whole slide's arrays under
the final name would write them twice, so that one step renames the element's folder in the store.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from histex._validation import check_bool

STAGING_SUFFIX = "_incomplete"


def is_backed(sdata) -> bool:
    """Whether ``sdata`` was written to or read from a zarr store on disk that new elements can be written to."""
    path = getattr(sdata, "path", None)
    return path is not None and Path(path).is_dir()


def wants_store(sdata, to_store: bool | None) -> bool:
    """Resolve ``to_store``: ``None`` means 'when ``sdata`` is backed'; ``True`` on an unbacked ``sdata`` is an error."""
    if check_bool("to_store", to_store, none_ok=True) is None:
        return is_backed(sdata)
    if to_store and not is_backed(sdata):
        raise ValueError(
            "to_store=True needs a SpatialData backed by a zarr store (sdata.write(path) or spatialdata.read_zarr); "
            "this one lives in memory."
        )
    return bool(to_store)


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


class Staging:
    """Elements of one run written to ``sdata``'s store under a staging name while their final name is taken.

    :meth:`stage` writes an element; :meth:`commit` puts every staged element under its final name (replacing the
    old one) and out of ``sdata`` (the writer then puts the element read from its final place back); :meth:`abort`
    deletes what was staged. Until :meth:`commit`, the old elements are untouched, in memory and on disk.
    """

    def __init__(self, sdata):
        self.sdata = sdata
        self.staged: dict[tuple[str, str], str] = {}  # (kind, final name) -> name on disk until commit

    def stage(self, kind: str, key: str, element) -> str:
        """Write ``element`` to the store, under ``key`` or, while ``key`` is taken, a staging name; returns the name."""
        taken = key in getattr(self.sdata, kind) or f"{kind}/{key}" in self.sdata.elements_paths_on_disk()
        staging = f"{key}{STAGING_SUFFIX}" if taken else key
        drop_element(self.sdata, kind, staging, from_store=True)  # left over from an interrupted run
        getattr(self.sdata, kind)[staging] = element
        self.staged[(kind, key)] = staging
        with quiet_zarr_notices():
            self.sdata.write_element(staging)
        return staging

    def replaces(self, kind: str, key: str) -> bool:
        """Whether committing ``key`` replaces an element of that name."""
        return self.staged.get((kind, key), key) != key

    def path(self, kind: str, key: str) -> Path:
        """Where ``key``'s element is in the store now: its staging folder until :meth:`commit`."""
        return Path(self.sdata.path) / kind / self.staged.get((kind, key), key)

    def commit(self) -> None:
        """Put the staged elements under their final names, replacing the old ones, and take them out of ``sdata``."""
        for (kind, key), staging in self.staged.items():
            del getattr(self.sdata, kind)[staging]
            if staging != key:
                drop_element(self.sdata, kind, key, from_store=True)
                folder = Path(self.sdata.path) / kind
                (folder / staging).rename(folder / key)
        self.staged = {}
        if self.sdata.has_consolidated_metadata():
            self.sdata.write_consolidated_metadata()

    def abort(self) -> None:
        """Delete what was staged; ``sdata`` and its store are as they were."""
        for (kind, _), staging in self.staged.items():
            drop_element(self.sdata, kind, staging, from_store=True)
        self.staged = {}
