"""The one check every numeric setting starts from: is this a number a float can hold?

``math.isfinite(10**400)`` and ``float(10**400)`` raise a bare ``OverflowError`` naming nothing;
each setting's own check reads its value through ``as_float`` instead, so that an integer past a
float's range is refused like any other number out of range: a ``ValueError`` naming the
argument and what is valid.

``keywords_checked`` gives the core classes' constructors what the callbacks' give: a mistyped
keyword is refused naming the nearest valid one (``unknown_keyword``, the one message for both).
``one_line``: a name that prints as one line (a run id heads a report). ``as_count``: a count of
samples or tokens as a plain int. ``check_output_dir``: a directory that can hold the records.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
import os
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

_Class = TypeVar("_Class", bound=type)


def as_float(value: object) -> float:
    """``value`` as a float; NaN where it is no real number (a bool, a string, None) or none a
    float can hold (``10**400``), which every range check then refuses."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def as_count(name: str, value: object) -> int:
    """``value`` as a plain int >= 0: any integer (NumPy's, a torch scalar's), else ValueError. A
    NumPy integer was written to the records as a string, which made the whole file unreadable."""
    try:
        count = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        count = None
    if count is None or count < 0:
        raise ValueError(f"{name} must be an integer >= 0 (None: not counted), got {value!r}")
    return count


def check_output_dir(output_dir: object) -> None:
    """Refuse, at construction, an ``output_dir`` that cannot hold the records: not a path, or a
    path that is (or lies under) a file. A directory not there yet is made at the first record; a
    file there failed every write of the run, and its records and summary were lost."""
    if output_dir is None:
        return
    if not isinstance(output_dir, (str, os.PathLike)):
        raise ValueError(f"output_dir must be a directory path (str or os.PathLike) or None, got {output_dir!r}")
    path = Path(output_dir)
    for place in (path, *path.parents):
        try:
            if not place.exists():
                continue
            is_dir = place.is_dir()
        except OSError:  # not ours to read (a permission): the writer says so if it matters
            return
        if not is_dir:
            where = "is a file" if place == path else f"lies under {str(place)!r}, which is a file"
            raise ValueError(f"output_dir {str(output_dir)!r} {where}, not a directory: records could not be written there")
        return


def one_line(text: str) -> bool:
    """Whether ``text`` holds no control character and no line or paragraph separator."""
    return not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def shown(value: object) -> str:
    """``repr(value)`` for a message; an integer past a float's range by its size (10**400 has 401
    digits, and one past 4300 digits has no repr at all)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            digits = int(abs(int(value)).bit_length() * math.log10(2))
            return f"an integer of about {'-' if value < 0 else ''}10**{digits}"
    return repr(value)


def unknown_keyword(owner: str, name: str, valid: Iterable[str]) -> TypeError:
    """The error for a keyword ``owner`` does not take: the nearest valid name, if one is near
    (``ouput_dir``: ``output_dir``), and every valid one."""
    import difflib  # on the error's path only

    names = sorted(valid)
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint} (valid: {', '.join(names)})")


def keyword_names(function: Callable) -> tuple[str, ...]:
    """The names ``function`` takes by keyword (after ``self``), read from its code, through a
    ``keywords_checked`` wrapper."""
    code = getattr(function, "__wrapped__", function).__code__
    first = max(1, code.co_posonlyargcount)
    return code.co_varnames[first:code.co_argcount + code.co_kwonlyargcount]


def keywords_checked(cls: _Class) -> _Class:
    """Class decorator: a keyword the constructor does not take raises ``unknown_keyword``'s
    TypeError (Python's own names ``__init__`` and says nothing of what is valid). A construction
    that succeeds costs one call more (constructors only: nothing per step); the names are looked
    at only once Python has refused the call, which it does before the constructor's body runs."""
    init = cls.__init__
    if init.__code__.co_flags & 0x08:  # CO_VARKEYWORDS: it takes any keyword
        return cls
    valid = frozenset(keyword_names(init))
    owner = cls.__qualname__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except TypeError:
            unknown = next((name for name in kwargs if name not in valid), None)
            if unknown is None:  # the constructor's own TypeError, or a positional mistake
                raise
            raise unknown_keyword(owner, unknown, valid) from None

    cls.__init__ = __init__  # type: ignore[misc]
    return cls
