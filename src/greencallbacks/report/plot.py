"""The report's figure: energy per epoch and cumulative CO2eq (matplotlib, imported only when drawn)."""

from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path
from typing import Collection, Sequence

from greencallbacks.figures import PLOT_FORMATS, check_matplotlib, new_figure, save_figure
from greencallbacks.records import Record
from greencallbacks.report.data import (
    describe_configuration,
    epoch_summary,
    group_runs,
    run_ids,
)
from greencallbacks.textformat import (
    ENERGY_UNITS,
    MASS_UNITS,
    pick_unit,
)


# Characters of a title line that fit the figure's width at the title's size, with a margin: a
# configuration's description is longer, and cut at the image's edges it lost what tells panels apart.
TITLE_WIDTH_CHARS = 70
FIGURE_WIDTH_IN = 6.4
PANEL_HEIGHT_IN = 3.8
TITLE_LINE_IN = 0.2  # the room each further title line takes from the panel, given back


def plot_epochs(records: Sequence[Record], path: str | os.PathLike, unfinished: Collection[str] = ()) -> Path:
    """Write ``epoch_figure``; the format (PNG, PDF, SVG) is taken from ``path``'s extension."""
    check_plot_path(path)  # a wrong extension or place fails before any drawing
    return save_figure(epoch_figure(records, unfinished), path)


def check_plot_path(path: str | os.PathLike, name: str = "plot file") -> None:
    """Refuse a plot that could not be written, before the work that draws it: matplotlib missing
    (the report was printed, then the plot failed), a wrong extension, a directory (or a name ending in a slash, which names one), or a directory that does
    not exist or cannot be written in. ``name``: what the message calls it (``--plot``)."""
    text = os.fspath(path)
    target = Path(text)
    check_matplotlib()
    if target.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ValueError(f"{name} {text!r} must end in {', '.join('.' + f for f in PLOT_FORMATS[:-1])} or "
                         f".{PLOT_FORMATS[-1]} (the format is taken from it)")
    folder = target.parent
    # Path drops a trailing slash ("dir.png/" is Path("dir.png")): read it from the text.
    if text.endswith(("/", os.sep)):
        raise ValueError(f"{name} {text!r} ends in a slash, which names a directory: give a file to write the plot to")
    if target.is_dir():
        raise ValueError(f"{name} {text!r} is a directory: give a file to write the plot to")
    if not folder.is_dir():
        raise ValueError(f"{name} {text!r}: its directory {str(folder)!r} does not exist")
    # Tried, not read from permission bits: root passes them, and /sys refuses root. Without
    # blocking (a FIFO without a reader refuses), and removing only a file made here (a link
    # whose target is missing stays, and the plot is written through it).
    made = not os.path.lexists(target)
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK))
    except OSError as error:
        raise ValueError(f"{name} {text!r} cannot be written: {error.strerror or error}") from None
    if made:
        with contextlib.suppress(OSError):
            target.unlink()


def _tick(row: dict, with_attempt: bool) -> str:
    """A short, stacked tick label: the epoch, then its attempt, state and runs on lines below."""
    lines = [str(row["epoch"])]
    if with_attempt and row["attempt"] is not None:  # None: whole epochs, whatever attempt trained them
        lines.append(f"attempt {row['attempt']}")
    if row["redone"] or row["partial"]:
        lines.append("cut short" if row["redone"] else "partial")
    if not row.get("in_every_run", True):  # a bar that is no mean over every run says so
        lines.append(f"{row['runs']} of {row['of_runs']} runs")
    return "\n".join(lines)


def _panel_title(config: dict, group: Sequence[Record], several: bool) -> str:
    """The panel's title; with several panels, the configuration below it, wrapped to the figure's width."""
    runs = len(run_ids(group))
    title = "Energy per epoch and cumulative CO2eq" + (f" (mean of {runs} runs, bars ± SE)" if runs > 1 else "")
    if several:
        title += "\n" + textwrap.fill(describe_configuration(config), TITLE_WIDTH_CHARS, break_on_hyphens=False)
    # matplotlib reads text between two "$" as math: a sensor named "gpu$x$" failed the plot.
    return title.replace("$", r"\$")


def epoch_figure(records: Sequence[Record], unfinished: Collection[str] = ()):
    """Per-epoch training and validation energy (stacked bars, SE error bars over runs) and cumulative CO2eq.

    One panel per configuration; a matplotlib ``Figure`` with its own canvas.
    """
    groups = [(config, group) for config, group in group_runs(records, unfinished) if epoch_summary(group)]
    if not groups:
        raise ValueError("no training epochs to plot")
    titles = [_panel_title(config, group, len(groups) > 1) for config, group in groups]
    extra_lines = sum(title.count("\n") for title in titles)
    figure = new_figure(FIGURE_WIDTH_IN, PANEL_HEIGHT_IN * len(groups) + TITLE_LINE_IN * extra_lines)
    from matplotlib.ticker import (
        MaxNLocator,  # after new_figure, which says how to install matplotlib
    )
    for index, (config, group) in enumerate(groups):
        rows = epoch_summary(group)
        positions = list(range(len(rows)))
        train = [row["energy_kwh"]["mean"] for row in rows]
        val = [row["val_energy_kwh"]["mean"] if row["val_energy_kwh"] else 0.0 for row in rows]
        unit, factor = pick_unit([t + v for t, v in zip(train, val)], ENERGY_UNITS)
        errors = [(row["energy_kwh"]["se"] or 0.0) * factor for row in rows]
        cumulative, running = [], 0.0
        for row in rows:
            # Per run on average: a row that covers some of the runs adds its share to the mean.
            share = row.get("runs", 1) / row.get("of_runs", 1)
            running += (row["co2eq_g"]["mean"] + (row["val_co2eq_g"]["mean"] if row["val_co2eq_g"] else 0.0)) * share
            cumulative.append(running)
        m_unit, m_factor = pick_unit(cumulative, MASS_UNITS)

        axes = figure.add_subplot(len(groups), 1, index + 1)
        axes.bar(positions, [t * factor for t in train], yerr=errors if any(errors) else None, color="#4c9a6a",
                 error_kw={"ecolor": "#777777", "capsize": 4, "elinewidth": 1},
                 label=f"training ({unit})")
        if any(val):
            axes.bar(positions, [v * factor for v in val], bottom=[t * factor for t in train], color="#a9cfb4",
                     label=f"validation ({unit})")
        axes.set_xticks(positions, [_tick(row, len({a for r in rows for a in r["attempts"]}) > 1) for row in rows], fontsize="small")
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"energy per epoch ({unit})")
        line_axes = axes.twinx()
        covers = "training + validation" if any(val) else "training"
        line_axes.plot(positions, [c * m_factor for c in cumulative], color="#333333", marker="o",
                       label=f"cumulative CO2eq ({m_unit}), {covers}")
        line_axes.set_ylabel(f"cumulative CO2eq ({m_unit})")
        # Headroom above bars and line for the legend, so it hides neither.
        axes.set_ylim(0, 1.45 * max((t + v) * factor + e for t, v, e in zip(train, val, errors)) or 1.0)
        line_axes.set_ylim(0, 1.45 * max(cumulative) * m_factor or 1.0)
        line_axes.yaxis.set_major_locator(MaxNLocator(nbins=6))
        axes.set_title(titles[index], fontsize="medium")
        handles = axes.get_legend_handles_labels()[0] + line_axes.get_legend_handles_labels()[0]
        axes.legend(handles, [h.get_label() for h in handles], loc="upper left", ncol=2, fontsize="small", frameon=False)
    figure.tight_layout()
    return figure
