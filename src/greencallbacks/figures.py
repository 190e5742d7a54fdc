"""Figures without pyplot: a Figure on its own canvas, its format taken from the file name (report and whatif)."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
from pathlib import Path

from greencallbacks import extras

PLOT_FORMATS = ("png", "pdf", "svg")


def check_matplotlib() -> None:
    """Fail before the work a figure ends, where matplotlib is missing (the report was printed, then
    the plot failed): the same error as drawing would raise, naming the extra that installs it."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise extras.missing(ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"), "plotting",
                             ("matplotlib",), extras.PLOT)


def plot_format(path: str | os.PathLike) -> str:
    """The figure format named by the file's extension (``png``, ``pdf`` or ``svg``)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ValueError(f"plot file {os.fspath(path)!r} must end in .png, .pdf or .svg (the format is taken from it)")
    return suffix


def new_figure(width: float, height: float):
    """A matplotlib Figure with its own canvas: no pyplot, no backend switch in the caller's session."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as error:
        raise extras.missing(error, "plotting", ("matplotlib",), extras.PLOT) from None
    figure = _figure_class()(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


@functools.lru_cache(maxsize=1)
def _figure_class():
    from matplotlib.figure import Figure

    class ReportFigure(Figure):
        """A Figure a notebook shows as an image: IPython draws a bare Figure only once pyplot's
        inline backend is on, and showed ours as "<Figure size 768x456 with 2 Axes>" before."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png")
            return buffer.getvalue()

    # Pickled by name: found through the module's __getattr__.
    ReportFigure.__module__, ReportFigure.__qualname__ = __name__, "ReportFigure"
    return ReportFigure


def __getattr__(name: str):
    if name == "ReportFigure":
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_figure(figure, path: str | os.PathLike) -> Path:
    fmt = plot_format(path)
    figure.savefig(os.fspath(path), format=fmt)
    return Path(path)
