"""Figures without pyplot: a Figure on its own canvas, its format taken from the file name (report and whatif)."""

from __future__ import annotations

import os
from pathlib import Path

from greencallbacks import extras

PLOT_FORMATS = ("png", "pdf", "svg")


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
        from matplotlib.figure import Figure
    except ImportError as error:
        raise extras.missing(error, "plotting", ("matplotlib",), extras.PLOT) from None
    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | os.PathLike) -> Path:
    fmt = plot_format(path)
    figure.savefig(os.fspath(path), format=fmt)
    return Path(path)
