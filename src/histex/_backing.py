"""The zarr store behind a SpatialData: whether there is one to write to, removing an element from it, and staging
new elements so that an interrupted run never replaces what was there.

Writers that stream into the store (feature maps, super-resolved bins) write their elements with spatialdata's
``write_element`` under a name with :data:`STAGING_SUFFIX` (:class:`Staging`), and put them in place only when
complete: an old element of the name is renamed aside, the staged one takes its name, and the old one is then
deleted with ``delete_element_from_disk``. spatialdata has no way to rename an element on disk, and copying a whole
slide's arrays under the final name would write them twice, so those steps rename the elements' folders.
"""

from __future__ import annotations

import shutil
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
    """Elements of one run written to ``sdata``'s store under a staging name, put under their final names at the end.

    :meth:`stage` writes an element under ``<key>`` + :data:`STAGING_SUFFIX`, so that an interrupted run never
    leaves a half-written element under a name a reader trusts; :meth:`commit` moves each staged element to its
    final name (an old element of that name goes aside first and is deleted only once the new one is in place) and
    takes it out of ``sdata`` (the writer then puts the element read from its final place back); :meth:`abort`
    deletes what is still staged. Until :meth:`commit`, the old elements are untouched, in memory and on disk.
    """

    def __init__(self, sdata):
        self.sdata = sdata
        self.staged: dict[tuple[str, str], str] = {}  # (kind, final name) -> staging name, until committed
        self._replaces: set[tuple[str, str]] = set()

    def stage(self, kind: str, key: str, element) -> str:
        """Write ``element`` to the store under ``key``'s staging name; returns that name."""
        if key in getattr(self.sdata, kind) or f"{kind}/{key}" in self.sdata.elements_paths_on_disk():
            self._replaces.add((kind, key))
        staging = f"{key}{STAGING_SUFFIX}"
        drop_element(self.sdata, kind, staging, from_store=True)  # left over from an interrupted run
        getattr(self.sdata, kind)[staging] = element
        self.staged[(kind, key)] = staging
        with quiet_zarr_notices():
            self.sdata.write_element(staging)
        return staging

    def replaces(self, kind: str, key: str) -> bool:
        """Whether committing ``key`` replaces an element of that name."""
        return (kind, key) in self._replaces

    def path(self, kind: str, key: str) -> Path:
        """Where ``key``'s element is in the store now: its staging folder until :meth:`commit`."""
        return Path(self.sdata.path) / kind / self.staged.get((kind, key), key)

    def commit(self) -> None:
        """Put the staged elements under their final names, replacing the old ones, and take them out of ``sdata``.

        Each element is moved on its own: the old one is renamed aside, the staged one takes its name, and only then
        is the old one deleted, so that at every moment one complete element exists on disk under a known name.
        """
        folder = Path(self.sdata.path)
        for (kind, key), staging in list(self.staged.items()):
            elements = getattr(self.sdata, kind)
            for name in (staging, key):
                if name in elements:
                    del elements[name]  # the in-memory elements read from these folders
            aside = folder / kind / f"{key}{STAGING_SUFFIX}_replaced"
            if (folder / kind / key).exists():
                (folder / kind / key).rename(aside)
            try:
                (folder / kind / staging).rename(folder / kind / key)
            except OSError:
                if aside.exists():  # put the old element back under its name
                    aside.rename(folder / kind / key)
                raise
            del self.staged[(kind, key)]  # committed: abort() must not touch it any more
            if aside.exists():
                try:
                    self.sdata.delete_element_from_disk(aside.name)
                except ValueError:  # not readable as an element (a half-written one): its folder goes all the same
                    shutil.rmtree(aside, ignore_errors=True)
        if self.sdata.has_consolidated_metadata():
            self.sdata.write_consolidated_metadata()

    def abort(self) -> None:
        """Delete what is still staged; ``sdata`` and its store keep the elements they had."""
        for (kind, _), staging in list(self.staged.items()):
            drop_element(self.sdata, kind, staging, from_store=True)
        self.staged = {}
