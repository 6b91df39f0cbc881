"""Checks of user-given parameters, shared by every public function: each refuses a bad value before any work,
with a message that names the parameter and what it accepts.
"""

from __future__ import annotations

import inspect
import numbers
import os
import warnings
from collections.abc import Collection, Iterable
from pathlib import Path

import numpy as np

_PACKAGE_DIR = str(Path(__file__).parent) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn about something the user can fix, pointing at the user's own line (the first frame outside histex)."""
    frame, level = inspect.currentframe(), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def check_int(name: str, value, *, minimum: int | None = 1, maximum: int | None = None, none_ok: bool = False):
    """``value`` as an ``int`` (integral floats and numpy integers are accepted; booleans are not)."""
    if value is None and none_ok:
        return None
    integral = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise TypeError(f"{name} must be an integer{' or None' if none_ok else ''}, got {value!r}.")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_range(minimum, maximum, False, False)}, got {value}.")
    return value


def check_number(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: bool = False,
    below: bool = False,
    none_ok: bool = False,
):
    """``value`` as a finite ``float`` within the bounds (``above``/``below``: the bound itself is excluded)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{' or None' if none_ok else ''}, got {value!r}.")
    value = float(value)
    low_bad = minimum is not None and (value <= minimum if above else value < minimum)
    high_bad = maximum is not None and (value >= maximum if below else value > maximum)
    if low_bad or high_bad or not np.isfinite(value):
        finite = "" if np.isfinite(value) or (minimum is None and maximum is None) else "finite and "
        raise ValueError(f"{name} must be {finite}{_range(minimum, maximum, above, below)}, got {value}.")
    return value


def check_choice(name: str, value, choices: Collection, *, none_ok: bool = False):
    """``value`` if it is one of ``choices``."""
    if (value is None and none_ok) or (isinstance(value, str | bool | np.bool_ | numbers.Number) and value in choices):
        return value.item() if isinstance(value, np.generic) else value
    options = ", ".join(repr(c) for c in choices) + (" or None" if none_ok else "")
    raise ValueError(f"{name} must be one of {options}; got {value!r}.")


def check_bool(name: str, value, *, none_ok: bool = False):
    """``value`` as ``True`` or ``False`` (numpy booleans, and the integers 0 and 1, too)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool | np.bool_) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False{' or None' if none_ok else ''}, got {value!r}.")


def check_key(name: str, value, *, none_ok: bool = False):
    """An element name spatialdata accepts: letters, digits, ``_``, ``-`` and ``.``, not starting with ``__``."""
    if value is None and none_ok:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}.")
    if value in ("", ".", "..") or value.startswith("__") or not all(c.isalnum() or c in "_-." for c in value):
        raise ValueError(
            f"{name}={value!r} is not a valid element name: use letters, digits, '_', '-' and '.', not starting "
            "with '__'."
        )
    return value


def check_genes(value, *, name: str = "genes", none_ok: bool = True) -> list[str] | None:
    """A non-empty list of distinct gene names (a single string is refused: it would be read letter by letter)."""
    if value is None and none_ok:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of gene names, got {value!r}; for one gene pass [{value!r}].")
    genes = list(value)
    if not genes:
        raise ValueError(f"{name} is empty; pass at least one gene{' or None' if none_ok else ''}.")
    bad = [g for g in genes if not isinstance(g, str)]
    if bad:
        raise TypeError(f"{name} must hold gene names (strings), got {bad[:3]!r}.")
    seen, repeated = set(), []
    for gene in genes:
        if gene in seen and gene not in repeated:
            repeated.append(gene)
        seen.add(gene)
    if repeated:
        raise ValueError(f"{name} names {', '.join(repeated[:5])} more than once; pass each gene once.")
    return genes


def check_seed(value, *, name: str = "seed") -> int:
    """A seed numpy and torch both accept: an integer from 0 to 2**63 - 1."""
    seed = check_int(name, value, minimum=None)
    if not 0 <= seed < 2**63:
        raise ValueError(f"{name} must be a non-negative integer below 2**63, got {seed}.")
    return seed


def _range(minimum, maximum, above: bool, below: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"in {'(' if above else '['}{minimum:g}, {maximum:g}{')' if below else ']'}"
    if minimum is not None:
        return f"{'>' if above else '>='} {minimum:g}"
    if maximum is not None:
        return f"{'<' if below else '<='} {maximum:g}"
    return "finite"
