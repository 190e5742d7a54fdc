"""The report's figure: energy per epoch and cumulative CO2eq (matplotlib, imported only when drawn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from greencallbacks.figures import new_figure, plot_format, save_figure
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


def plot_epochs(records: Sequence[Record], path: str | os.PathLike) -> Path:
    """Write ``epoch_figure``; the format (PNG, PDF, SVG) is taken from ``path``'s extension."""
    plot_format(path)  # a wrong extension fails before any drawing
    return save_figure(epoch_figure(records), path)


def _tick(row: dict, with_attempt: bool) -> str:
    """A short, stacked tick label: the epoch, then its attempt, state and runs on lines below."""
    lines = [str(row["epoch"])]
    if with_attempt:
        lines.append(f"attempt {row['attempt']}")
    if row["redone"] or row["partial"]:
        lines.append("cut short" if row["redone"] else "partial")
    if not row.get("in_every_run", True):  # a bar that is no mean over every run says so
        lines.append(f"{row['runs']} of {row['of_runs']} runs")
    return "\n".join(lines)


def epoch_figure(records: Sequence[Record]):
    """Per-epoch training and validation energy (stacked bars, SE error bars over runs) and cumulative CO2eq.

    One panel per configuration; a matplotlib ``Figure`` with its own canvas.
    """
    groups = [(config, group) for config, group in group_runs(records) if epoch_summary(group)]
    if not groups:
        raise ValueError("no training epochs to plot")
    figure = new_figure(6.4, 3.8 * len(groups))
    from matplotlib.ticker import (
        MaxNLocator,  # after new_figure, which says how to install matplotlib
    )
    for index, (config, group) in enumerate(groups):
        rows = epoch_summary(group)
        positions = list(range(len(rows)))
        train = [row["energy_kwh"]["mean"] for row in rows]
        val = [row["val_energy_kwh"]["mean"] for row in rows]
        unit, factor = pick_unit([t + v for t, v in zip(train, val)], ENERGY_UNITS)
        errors = [(row["energy_kwh"]["se"] or 0.0) * factor for row in rows]
        cumulative, running = [], 0.0
        for row in rows:
            # Per run on average: a row that covers some of the runs adds its share to the mean.
            share = row.get("runs", 1) / row.get("of_runs", 1)
            running += (row["co2eq_g"]["mean"] + row["val_co2eq_g"]["mean"]) * share
            cumulative.append(running)
        m_unit, m_factor = pick_unit(cumulative, MASS_UNITS)

        axes = figure.add_subplot(len(groups), 1, index + 1)
        axes.bar(positions, [t * factor for t in train], yerr=errors if any(errors) else None, color="#4c9a6a",
                 error_kw={"ecolor": "#777777", "capsize": 4, "elinewidth": 1},
                 label=f"training ({unit})")
        if any(val):
            axes.bar(positions, [v * factor for v in val], bottom=[t * factor for t in train], color="#a9cfb4",
                     label=f"validation ({unit})")
        axes.set_xticks(positions, [_tick(row, len({r["attempt"] for r in rows}) > 1) for row in rows], fontsize="small")
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
        runs = len(run_ids(group))
        title = "Energy per epoch and cumulative CO2eq" + (f" (mean of {runs} runs, bars ± SE)" if runs > 1 else "")
        if len(groups) > 1:
            title += f"\n{describe_configuration(config)}"
        axes.set_title(title, fontsize="medium")
        handles = axes.get_legend_handles_labels()[0] + line_axes.get_legend_handles_labels()[0]
        axes.legend(handles, [h.get_label() for h in handles], loc="upper left", ncol=2, fontsize="small", frameon=False)
    figure.tight_layout()
    return figure
