"""Reports from records: per-epoch table, totals by phase, provenance and a citable statement.

Formats: Markdown, LaTeX (booktabs), JSON, CSV, and a plot (PNG, PDF or SVG).

Runs are grouped by configuration (``configuration``: framework, training epochs, samples per
epoch, sensors and how they measure, ranks); the runs of one group are treated as repeats and
summarised as mean ± standard error over runs; a group of one run shows no ± over runs.
An epoch that an attempt began and a later attempt (a resume after a crash) redid is its own
row; its energy stays in the run's total, since it was spent.

Plain Python, no framework and no pandas: a report must be producible anywhere the records are.
matplotlib is imported only when a plot is asked for.
"""

from __future__ import annotations

import json
import math
from typing import Collection, Mapping, Sequence

from greencallbacks.figures import plot_format
from greencallbacks.records import Record
from greencallbacks.report.data import (
    EQUIVALENTS,
    GROUPED_BY,
    carbon_summary,
    compare_zones,
    configuration,
    covers_text,
    cut_short,
    describe_configuration,
    embodied_total,
    epoch_label,
    epoch_rows,
    epoch_status,
    epoch_summary,
    equivalents,
    group_runs,
    hardware,
    is_estimated,
    mean_and_se,
    method_sentence,
    methods_of,
    phase_summary,
    phase_totals,
    prefix_summary,
    provenance,
    run_ids,
    run_totals,
    statement,
    summaries,
    summary,
)
from greencallbacks.report.plot import epoch_figure, plot_epochs
from greencallbacks.report.text import (
    CSV_COLUMNS,
    format_epoch_summary,
    format_epoch_table,
    format_phase_summary,
    latex_escape,
    render_csv,
    render_latex,
    render_markdown,
)

__all__ = [
    "CSV_COLUMNS", "EQUIVALENTS", "FORMATS", "GROUPED_BY", "carbon_summary", "compare_zones", "configuration",
    "covers_text", "cut_short", "describe_configuration", "embodied_total", "epoch_figure", "epoch_label", "epoch_rows",
    "epoch_status", "epoch_summary", "equivalents", "format_epoch_summary", "format_epoch_table",
    "format_phase_summary", "group_runs", "hardware",
    "is_estimated", "latex_escape", "mean_and_se", "method_sentence", "methods_of", "phase_summary", "phase_totals",
    "plot_epochs", "plot_format", "prefix_summary", "provenance", "render", "render_csv", "render_latex",
    "render_markdown", "run_ids", "run_totals", "statement", "summaries", "summary",
]

FORMATS = ("md", "latex", "json", "csv")


def render(records: Sequence[Record], fmt: str = "md", *, with_equivalents: bool = False, compare: Sequence[str] = (),
           run_summaries: Mapping[str, dict] | None = None, unfinished: Collection[str] = ()) -> str:
    """The report in ``fmt``. ``run_summaries`` and ``unfinished``: what ``runs.load`` found beside
    the records (each run's energy-summary.json, and the runs that left none)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not records:
        raise ValueError("no records to report")
    if fmt == "csv" and (with_equivalents or compare):  # the table of epochs alone: they would be dropped
        raise ValueError("with_equivalents and compare are not in the csv format (the table of epochs alone): "
                         "use md, latex or json")
    found_beside = {"run_summaries": run_summaries, "unfinished": unfinished}
    if fmt == "md":
        return render_markdown(records, with_equivalents=with_equivalents, compare=compare, **found_beside)
    if fmt == "latex":
        return render_latex(records, with_equivalents=with_equivalents, compare=compare, **found_beside)
    if fmt == "json":
        data = summaries(records, with_equivalents=with_equivalents, compare=compare, **found_beside)
        return json.dumps(_finite_json(_uncounted_as_null(data)), indent=2, allow_nan=False)
    return render_csv(records, unfinished)


def _uncounted_as_null(value):
    """Samples that could not be counted as null, as the CSV leaves them empty: beside
    ``samples_counted: false`` a 0 still reads as a count (and a per-sample cost divides by it)."""
    if isinstance(value, dict):
        value = {k: _uncounted_as_null(v) for k, v in value.items()}
        if value.get("samples_counted") is False:
            for key in ("samples", "train_samples"):
                if key in value:
                    value[key] = None
        return value
    if isinstance(value, (list, tuple)):
        return [_uncounted_as_null(v) for v in value]
    return value


def _finite_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value
