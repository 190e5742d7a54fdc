"""The report as text: Markdown, LaTeX (booktabs) and CSV, rendered from ``report.data``."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from typing import Collection, Mapping, Sequence

from greencallbacks.records import Record
from greencallbacks.report.data import (
    covers_text,
    embodied_coverage,
    epoch_rows,
    epoch_status,
    group_runs,
    over_runs,
    phases_text,
    source_text,
    summaries,
    summary,
    uncertainty_text,
)
from greencallbacks.textformat import (
    column_texts,
    energy_text,
    mass_text,
    ENERGY_UNITS,
    JOULE_UNITS,
    MASS_UNITS,
    csv_number,
    intensity_text,
    markdown_table,
    number,
    pick_unit,
    plus_minus,
    printable,
)


def _heading(name: str, unit: str, several: bool) -> str:
    return f"{name} ({unit}, mean ± SE)" if several else f"{name} ({unit})"


def _count(value: float) -> str:
    """A count (or a mean of counts) exactly, not to three significant digits."""
    return str(int(value)) if float(value).is_integer() else number(value, 6)


def _pairs(stats: Sequence[dict | None], factor: float) -> list[tuple[float, float | None] | None]:
    """Each mean ± SE (None: n/a) of a column, in the column's unit."""
    return [None if stat is None else (stat["mean"] * factor, None if stat["se"] is None else stat["se"] * factor)
            for stat in stats]


def _column(stats: Sequence[dict | None], factor: float) -> list[str]:
    """A Markdown column's cells (n/a where None), in the column's one notation (``column_texts``)."""
    return ["n/a" if text is None else text[0] if text[1] is None else f"{text[0]} ± {text[1]}"
            for text in column_texts(_pairs(stats, factor))]


def _scaled(stat: dict | None, factor: float, sign: str = " ± ") -> str:
    if stat is None:
        return "n/a"
    se = stat["se"]
    return plus_minus(stat["mean"] * factor, None if se is None else se * factor, sign)


def _units(rows: Sequence[dict], total: dict | None = None) -> dict[str, tuple[str, float]]:
    """One unit per column, so that the column's largest value (or the total under it) reads from 1 up."""
    energies = [r["energy_kwh"]["mean"] for r in rows] + [r["val_energy_kwh"]["mean"] for r in rows if r["val_energy_kwh"]]
    masses = [r["co2eq_g"]["mean"] for r in rows]
    if total is not None:
        energies.append(total["energy_kwh"]["mean"])
        masses.append(total["co2eq_g"]["mean"])
    return {
        "energy": pick_unit(energies, ENERGY_UNITS),
        "mass": pick_unit(masses, MASS_UNITS),
        "joule": pick_unit([r["j_per_sample"]["mean"] for r in rows if r["j_per_sample"]], JOULE_UNITS),
        "token": pick_unit([r["j_per_token"]["mean"] for r in rows if r.get("j_per_token")], JOULE_UNITS),
    }


def _with_tokens(rows: Sequence[dict]) -> bool:
    """Whether a table gets a per-token column: some row has a cost per token (none: the table as
    it was without tokens)."""
    return any(row.get("j_per_token") for row in rows)


def format_epoch_summary(data: dict) -> str:
    """Markdown per-epoch table; mean ± SE columns when there are several runs.

    Epochs that not every run has (one run cut short and resumed, the others not) are no mean
    over the repeats: they follow in a table of their own that names the runs of each row.
    """
    rows = data["epochs"]
    several = len(data["runs"]) > 1
    units = _units(rows) if rows else {"energy": ENERGY_UNITS[0], "mass": MASS_UNITS[1], "joule": JOULE_UNITS[1],
                                        "token": JOULE_UNITS[1]}
    (e_unit, e_f), (m_unit, m_f), (j_unit, j_f) = units["energy"], units["mass"], units["joule"]
    t_unit, t_f = units["token"]
    tokens = _with_tokens(rows)

    def cells(table: list[dict]) -> list[list[str]]:
        """Each row's cells, column by column: one notation per column (``column_texts``)."""
        def column(key: str, factor: float) -> list[str]:
            return _column([row[key] for row in table], factor)

        columns = [column("seconds", 1.0), column("energy_kwh", e_f), column("co2eq_g", m_f),
                   column("j_per_sample", j_f), *([column("j_per_token", t_f)] if tokens else []),
                   column("val_energy_kwh", e_f),
                   [value for value, _ in column_texts([(row["uncertainty_kwh"] * e_f, None) for row in table], 2)],
                   [row["methods"] for row in table]]
        return [list(row) for row in zip(*columns)]

    every = [row for row in rows if row.get("in_every_run", True)]
    some = [row for row in rows if not row.get("in_every_run", True)]
    parts = []
    if every or not some:
        header = ["epoch", _heading("time", "s", several), _heading("training", e_unit, several),
                  _heading("training CO2eq", m_unit, several), _heading("per sample", j_unit, several),
                  *([_heading("per token", t_unit, several)] if tokens else []),
                  _heading("validation", e_unit, several), f"sensor uncertainty ({e_unit})", "measured by"]
        parts.append(markdown_table(header, [[row["label"], *mine] for row, mine in zip(every, cells(every))],
                                    "lrrrr" + "r" * tokens + "rrl"))
    if some:
        parts.append("Epochs not in every run (a run cut short and resumed, or one that trained other epochs): each "
                     "row covers only the runs it names, as mean ± SE where it names several.")
        header = ["epoch", "runs", "time (s)", f"training ({e_unit})", f"training CO2eq ({m_unit})",
                  f"per sample ({j_unit})", *([f"per token ({t_unit})"] if tokens else []), f"validation ({e_unit})",
                  f"sensor uncertainty ({e_unit})", "measured by"]
        parts.append(markdown_table(header, [[row["label"], covers_text(row), *mine]
                                             for row, mine in zip(some, cells(some))],
                                    "llrrrr" + "r" * tokens + "rrl"))
    return "\n\n".join(parts)


def format_epoch_table(records: Sequence[Record]) -> str:
    """The per-epoch Markdown table of the records given (taken as one configuration)."""
    return format_epoch_summary(summary(records))


def format_phase_summary(data: dict) -> str:
    several = len(data["runs"]) > 1
    energies = [t["energy_kwh"]["mean"] for t in data["phases"].values()] + [data["total"]["energy_kwh"]["mean"]]
    e_unit, e_f = pick_unit(energies, ENERGY_UNITS)
    m_unit, m_f = pick_unit([data["total"]["co2eq_g"]["mean"]], MASS_UNITS)
    parts = [*data["phases"].values(), *(part for prefixes in data.get("phase_prefixes", {}).values()
                                         for part in prefixes.values())]
    # Tokens where a phase counted them, whole or in part (none: the table as it was without tokens).
    tokens = any(t.get("tokens") is not None or t.get("tokens_partial") for t in parts)
    t_unit, t_f = pick_unit([t["j_per_token"]["mean"] for t in parts if t.get("j_per_token")], JOULE_UNITS)
    header = ["phase", _heading("time", "s", several), _heading("energy", e_unit, several),
              _heading("CO2eq", m_unit, several), "samples" + (" (mean)" if several else "")]
    if tokens:
        header += ["tokens" + (" (mean)" if several else ""), _heading("per token", t_unit, several)]

    named = []
    for phase, t in data["phases"].items():
        named.append((phase, t))
        for prefix, part in data.get("phase_prefixes", {}).get(phase, {}).items():  # its parts, when logged apart
            named.append((f"… {prefix or '(no prefix)'}", part))
    summed = [t for _, t in named] + [data["total"]]
    # Column by column: one notation per column (``column_texts``), the whole run's row in it.
    columns = [[name for name, _ in named] + ["**whole run (all phases)**"],
               _column([t["seconds"] for t in summed], 1.0), _column([t["energy_kwh"] for t in summed], e_f),
               _column([t["co2eq_g"] for t in summed], m_f),
               [_count(t["samples"]["mean"]) if t["samples_counted"] else "n/a" for _, t in named] + [""]]
    if tokens:
        columns += [[_count(t["tokens"]["mean"]) if t.get("tokens") else "n/a" for _, t in named] + [""],
                    _column([t.get("j_per_token") for _, t in named], t_f) + [""]]
    body = [list(row) for row in zip(*columns)]
    return markdown_table(header, body, "lrrrr" + "rr" * tokens)


def pause_sentence(pause: dict, runs: int) -> str:
    """One sentence: how long training waited for a cleaner grid, and what that time cost."""
    seconds, energy, grams = pause["seconds"], pause["energy_kwh"], pause["co2eq_g"]
    per_run = " per run (mean ± SE)" if runs > 1 else ""
    return (f"Training was paused {_scaled(seconds, 1.0)} s{per_run} for a cleaner grid (carbon-aware pause); "
            f"that time used {energy_text(energy['mean'], energy['se'])} and emitted "
            f"{mass_text(grams['mean'], grams['se'])}, counted in the time between phases (other).")


def _embodied_lines(data: dict) -> list[str]:
    """Operational, embodied (with its range) and their sum, each stated apart."""
    embodied, total = data["embodied"], data["total"]
    e, both = embodied["embodied_co2eq_g"], embodied["operational_plus_embodied_co2eq_g"]
    return [
        f"- Operational (electricity): {mass_text(total['co2eq_g']['mean'], total['co2eq_g']['se'])}",
        f"- Embodied (manufacturing, amortised over the hardware's life): {mass_text(e['mean'], e['se'])} "
        f"(range {mass_text(embodied['embodied_co2eq_g_low'])} to {mass_text(embodied['embodied_co2eq_g_high'])})"
        + (f"; it covers {part} only, the rest having no figure" if (part := embodied_coverage(embodied)) else ""),
        f"- Operational + embodied: {mass_text(both['mean'], both['se'])}",
    ]


def _markdown_group(data: dict, level: str) -> list[str]:
    runs = data["runs"]
    parts = []
    if len(runs) > 1:
        parts += [f"Values are mean ± standard error over the {len(runs)} runs of this configuration.", ""]
    if data["epochs"]:
        parts += [f"{level} Per epoch (training, validation alongside)", "", format_epoch_summary(data), ""]
    else:
        parts += ["No training epochs in these records (evaluation or prediction alone, or steps outside any epoch, such as "
                  "a tuner's trials).", ""]
    parts += [f"{level} Totals by phase", "", format_phase_summary(data), ""]
    if data.get("carbon_pause"):
        parts += [pause_sentence(data["carbon_pause"], len(runs)), ""]
    if data.get("embodied"):
        parts += [f"{level} Operational and embodied CO2eq", "", *_embodied_lines(data), ""]
    parts += [f"{level} Hardware", ""]
    noted = any(p["note"] for p in data["hardware"])  # a column of no note is left out, as LaTeX's empty ones
    parts.append(markdown_table(
        ["component", "kind", "method", "share of IT energy", *(["note"] if noted else [])],
        [[p["name"], p["kind"], p["method"], f"{p['energy_share']:.0%}" if p["energy_share"] is not None else "n/a",
          *([p["note"]] if noted else [])] for p in data["hardware"]],
        "lllr" + "l" * noted,
    ))
    parts += ["", f"{level} Provenance", ""] + [f"- {n}" for n in data["provenance"]]
    parts += [
        f"- Sensor uncertainty of the whole run: ± "
        f"{uncertainty_text(data['total']['sensor_uncertainty_kwh'], data['total']['energy_kwh']['mean'])} "
        "(one standard uncertainty: estimates' biases added over the phases, a counter's boundary errors "
        "over the run's first and last boundaries, components in quadrature)."
    ]
    parts += ["", f"{level} Statement for a paper", "", data["statement"]]
    if "equivalents" in data:
        parts += ["", f"{level} Everyday equivalents (whole run)", ""]
        for e in data["equivalents"]:
            parts.append(f"- {_sentence_number(number(e['amount']))} {e['what']} ({e['source']}, {e['year']})")
    if "compare_zones" in data:
        parts += ["", f"{level} Had this run been elsewhere (same energy, other grid)", ""]
        parts.append(markdown_table(
            ["zone", "gCO2eq/kWh", "gCO2eq", "source"],
            [[row["zone"], number(row["g_per_kwh"], 4), number(row["co2eq_g"]), row["source"]]
             for row in data["compare_zones"]],
            "lrrl",
        ))
        if data.get("compare_zones_note"):
            parts += ["", f"Note: {data['compare_zones_note']}."]
    return parts


def render_markdown(records: Sequence[Record], *, with_equivalents: bool = False, compare: Sequence[str] = (),
                    run_summaries: Mapping[str, dict] | None = None, unfinished: Collection[str] = ()) -> str:
    data = summaries(records, with_equivalents=with_equivalents, compare=compare, run_summaries=run_summaries,
                     unfinished=unfinished)
    groups = data["configurations"]
    runs = [run for g in groups for run in g["runs"]]
    parts = [f"# Energy report ({len(runs)} run{'s' if len(runs) != 1 else ''}: {', '.join(map(printable, runs))})", ""]
    if len(runs) > 1:
        parts += [f"Runs are grouped by configuration ({data['grouped_by']}); runs of one configuration are "
                  "taken as repeats. To report one run alone, select it by its run id.", ""]
    if len(groups) == 1:
        if len(runs) > 1:
            parts += [f"Configuration: {groups[0]['description']}.", ""]
        parts += _markdown_group(groups[0], "##")
    else:
        for index, group in enumerate(groups, start=1):
            n = len(group["runs"])
            parts += [f"## Configuration {index}: {group['description']} ({n} run{'s' if n != 1 else ''}: "
                      f"{', '.join(map(printable, group['runs']))})", ""]
            parts += _markdown_group(group, "###") + [""]
    return "\n".join(parts).rstrip("\n") + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "×": r"$\times$", "→": r"$\rightarrow$", "µ": r"$\mu$",
    # LaTeX's default font encoding (OT1) prints these as other glyphs: a cloud region's source
    # "aws:us-east-1 (...) -> grid of US-VA" read "-¿ grid" in the paper.
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    # A blank line ends a paragraph, which inside \caption{} stops LaTeX with an error.
    "\n": " ", "\r": " ",
}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX document (specials escaped; ±, ×, →, µ as math)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# CO2 in a sentence, set as the table's header sets it (CO$_2$eq): the statement and the caption's
# sentences wrote "gCO2eq" beside a column of "CO$_2$eq" in the paper. Only the word or a unit
# (gCO2eq, mgCO2eq/kWh, CO2e): a name that holds CO2 is quoted as written, and an intensity
# series file "uk_CO2_grid.csv" or "CO2-2026.csv" read "uk\_CO$_2$\_grid.csv" in the caption.
_CO2 = re.compile(r"(?<![\w\\/.:-])((?:[mk]?g|t)?)CO2(?=(?:eq?)?(?![\w\\]|[.-]\w))")


def latex_prose(text: str) -> str:
    """A sentence of the report made LaTeX: ``latex_escape``'d, its CO2 typeset as CO$_2$."""
    return _CO2.sub(r"\1CO$_2$", latex_escape(text))


def _sentence_number(text: str) -> str:
    """A ``number`` in a sentence: its exponent as a power of ten, as LaTeX sets it (``_latex_number``):
    "6.19e-04 gallons" read as a typo in a paper's text, and differed from the LaTeX one."""
    mantissa, _, exponent = text.partition("e")
    return mantissa + (f" × 10^{int(exponent)}" if exponent else "")


def _latex_math(text: str) -> str:
    mantissa, _, exponent = text.partition("e")
    return mantissa + (f" \\times 10^{{{int(exponent)}}}" if exponent else "")


def _latex_number(text: str) -> str:
    return f"${_latex_math(text)}$" if "e" in text else text


def _latex_mass(grams: float) -> str:
    """gCO2eq in a sentence, in the statement's unit (``mass_text``): "7.33e-06 gCO2eq in FR" followed
    "emitted 0.0131 mgCO2eq"."""
    unit, factor = pick_unit([grams], MASS_UNITS)
    return f"{_latex_number(number(grams * factor))} {unit}CO$_2$eq"


def _latex_column(stats: Sequence[dict | None], factor: float) -> list[str]:
    """A column's cells (mean $\\pm$ SE, n/a where None), in the column's one notation (``column_texts``)."""
    cells = []
    for text in column_texts(_pairs(stats, factor)):
        if text is None:
            cells.append("n/a")
        elif text[1] is None:
            cells.append(_latex_number(text[0]))
        else:
            cells.append(f"${_latex_math(text[0])} \\pm {_latex_math(text[1])}$")
    return cells


def _latex_row(cells: Sequence[str]) -> str:
    """One row of a tabular, an empty cell as a bare ``&``."""
    return "".join([cells[0], *(f" & {cell}" if cell else " &" for cell in cells[1:])]) + " \\\\"


def _latex_group(data: dict, caption_extra: str, label: str) -> list[str]:
    several = len(data["runs"]) > 1
    rows = data["epochs"]
    over = f" Mean $\\pm$ standard error over {len(data['runs'])} runs." if several else ""
    if several and not all(row["in_every_run"] for row in rows):
        over += " An epoch marked with runs in brackets covers those runs only."
    total = data["total"]
    units = _units(rows, total)
    (e_unit, e_f), (m_unit, m_f), (j_unit, j_f) = units["energy"], units["mass"], units["joule"]
    t_unit, t_f = units["token"]
    tokens = _with_tokens(rows)
    # One "measured by" for the whole table when every row shares it: a column repeating it would
    # make the table wider than a paper's text.
    methods = list(dict.fromkeys(row["methods"] for row in rows)) or [", ".join(
        f"{h['name']}:{h['method']}" for h in data["hardware"])]
    per_row = len(methods) > 1
    caption = ("Energy and emissions" + (" per training epoch" if rows else "") + latex_prose(caption_extra) + "." + over
               + (f" Measured by: {latex_escape(methods[0] or 'no component recorded')}." if not per_row else "")
               # The phases it holds: "training, evaluation" of a run that only evaluated read as a fit.
               + f" Whole run: every phase ({phases_text(list(data['phases']))})."
               + (" " + latex_prose(pause_sentence(data["carbon_pause"], len(data["runs"]))) if data.get("carbon_pause") else ""))
    train_seconds = over_runs([t["train_seconds"] for t in data["run_totals"].values()])
    # Below the epochs, the training's and the whole run's totals; a column no row fills (a cost per
    # sample where no epoch trained: an evaluation alone) is left out, not printed empty.
    totals = ([("Training", train_seconds, total["train_energy_kwh"], total["train_co2eq_g"])] if rows else []) + [
        ("Whole run", total["seconds"], total["energy_kwh"], total["co2eq_g"])]
    below = [""] * len(totals)
    columns = [
        ("Time (s)", "r", _latex_column([row["seconds"] for row in rows] + [t[1] for t in totals], 1.0)),
        (f"Energy ({e_unit})", "r", _latex_column([row["energy_kwh"] for row in rows] + [t[2] for t in totals], e_f)),
        (f"CO$_2$eq ({m_unit})", "r", _latex_column([row["co2eq_g"] for row in rows] + [t[3] for t in totals], m_f)),
        (f"Per sample ({latex_escape(j_unit)})", "r",
         _latex_column([row["j_per_sample"] for row in rows], j_f) + below),
    ]
    if tokens:
        # The training's own cost per token, which a paper quotes: not the mean of its epochs' (they differ in tokens).
        columns.append((f"Per token ({latex_escape(t_unit)})", "r",
                        _latex_column([row["j_per_token"] for row in rows] + [data["phases"]["train"]["j_per_token"]],
                                      t_f) + [""]))
    if per_row:
        columns.append(("Measured by", "l", [latex_escape(row["methods"]) for row in rows] + below))
    columns = [column for column in columns if any(column[2])]
    labels = []
    for row in rows:
        covers = covers_text(row) if several else ""  # a row that is no mean over every run says whose it is
        labels.append(latex_escape(row["label"] + (f" [{covers}]" if covers else "")))
    labels += [name for name, *_ in totals]
    body = [_latex_row([label, *(cells[i] for _, _, cells in columns)]) for i, label in enumerate(labels)]
    # Said where the table is pasted from: its totals are a remnant's, not the run's.
    # A comment ends at the line's end: the rest of a note with a newline would be typeset.
    lines = [f"% {' '.join(note.splitlines())}" for note in data.get("records_missing", ())] + [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{" + caption + "}",
        f"\\label{{{label}}}",
        r"\begin{tabular}{l" + "".join(align for _, align, _ in columns) + "}",
        r"\toprule",
        _latex_row(["Epoch" if rows else "", *(name for name, _, _ in columns)]),
    ]
    if rows:
        lines += [r"\midrule", *body[:len(rows)]]
    lines += [r"\midrule", *body[len(rows):]]
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
        "",
        latex_prose(data["statement"]),
    ]
    if "equivalents" in data:
        lines += ["", "This is about " + " or ".join(
            f"{_latex_number(number(e['amount']))} {latex_prose(e['what'])} ({latex_prose(e['source'])}, {e['year']})"
            for e in data["equivalents"]
        ) + "."]
    if "compare_zones" in data:
        lines += ["", "The same energy would have emitted " + "; ".join(
            f"{_latex_mass(row['co2eq_g'])} in {latex_escape(row['zone'])} "
            f"({intensity_text(row['g_per_kwh'])} gCO$_2$eq/kWh)"
            for row in data["compare_zones"]
        ) + "."]
        if data.get("compare_zones_note"):
            lines[-1] += f" Note: {latex_prose(data['compare_zones_note'])}."
    return lines


def render_latex(records: Sequence[Record], *, with_equivalents: bool = False, compare: Sequence[str] = (),
                 run_summaries: Mapping[str, dict] | None = None, unfinished: Collection[str] = ()) -> str:
    """A booktabs table per configuration (needs ``\\usepackage{booktabs}``) and the statement, ready to paste."""
    data = summaries(records, with_equivalents=with_equivalents, compare=compare, run_summaries=run_summaries,
                     unfinished=unfinished)
    groups = data["configurations"]
    lines = [f"% Generated by greencallbacks {latex_escape(groups[0]['tool_version'])}; needs \\usepackage{{booktabs}}"]
    if len(groups) > 1:
        lines.append(f"% Runs grouped by configuration ({data['grouped_by']}).")
    descriptions = [group["description"] for group in groups]
    for index, group in enumerate(groups, start=1):
        extra = f" ({group['description']})" if len(groups) > 1 else ""
        if descriptions.count(group["description"]) > 1:  # runs alone by rule (cut short, failed), else alike
            extra = f" ({group['description']}; run{'s' if len(group['runs']) > 1 else ''} {', '.join(group['runs'])})"
        label = "tab:greencallbacks-energy" + (f"-{index}" if len(groups) > 1 else "")
        lines += _latex_group(group, extra, label) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


CSV_COLUMNS = ("configuration", "run_id", "attempt", "epoch", "status", "seconds", "energy_kwh", "co2eq_g",
               "uncertainty_kwh", "train_samples", "j_per_sample", "val_energy_kwh", "val_co2eq_g",
               "intensity_gco2eq_per_kwh", "intensity_source", "pue", "methods", "embodied_co2eq_g",
               # Appended (readers of the columns before keep their places): empty where not counted whole.
               "train_tokens", "j_per_token")


def render_csv(records: Sequence[Record], unfinished: Collection[str] = ()) -> str:
    """One row per (run, attempt, epoch), with the carbon settings beside the numbers."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for index, (_, group) in enumerate(group_runs(records, unfinished), start=1):
        train = defaultdict(list)
        for r in group:
            if r.phase == "train" and r.epoch is not None:
                train[(r.run_id, r.attempt, r.epoch)].append(r)
        for row in epoch_rows(group):
            mine = train.get((row["run_id"], row["attempt"], row["epoch"]), [])
            energy = sum(r.energy_kwh for r in mine)
            row.update(
                configuration=index,
                status=epoch_status(row),
                train_samples=row["train_samples"] if row["samples_counted"] else None,
                intensity_gco2eq_per_kwh=sum(r.co2eq_g for r in mine) / energy if energy > 0 else None,
                intensity_source="; ".join(dict.fromkeys(
                    source_text(r.intensity_source, r.intensity_zone, r.intensity_year, r.intensity_licence) for r in mine
                )),
                pue=mine[0].pue if mine else None,
            )
            writer.writerow({k: csv_number(v) for k, v in row.items()})
    return out.getvalue()
