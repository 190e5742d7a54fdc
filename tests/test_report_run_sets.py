"""Reports over run sets as researchers make them with the real frameworks, checked by hand from
the records: a Lightning seed sweep into one log root (``lightning_logs/version_N``), one of its
fits crashed in its second epoch and resumed, and a fit with another ``max_epochs``; three HF
trainings into one output root, one of them crashed and resumed from its checkpoint.

Each configuration's runs, the mean ± SE over them of each epoch's training energy, CO2eq and
per-sample cost, the phase and whole-run totals, and what md, csv, json and LaTeX print of them
(to their rounding); ``--run-id``, ``--compare-zones`` and ``lifecycle`` over the same set.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from greencallbacks import watch
from greencallbacks.cli import main
from greencallbacks.runs import load
from greencallbacks.textformat import ENERGY_UNITS, JOULE_UNITS, MASS_UNITS, energy_text
from greencallbacks.units import J_PER_KWH
from tests.fakes.scripted import ScriptedSensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.slow
POWER_W, INTENSITY = 50.0, 300.0


# ---------------------------------------------------------------------------- the run sets
@pytest.fixture(scope="module")
def lightning_sweep(tmp_path_factory):
    """Seeds 0-2 of a 2-epoch fit into one log root, seed 2 crashed in epoch 1 and resumed from
    the checkpoint of epoch 0; and a 3-epoch fit. Returns (root, {name: run id}, {name: run id}
    after the crash, before the resume: the root as it was then is ``<root>-after-the-crash``)."""
    pytest.importorskip("lightning", reason="lightning is not installed: its run sets need it")  # torch with it
    from lightning_models import Boom, flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    root = tmp_path_factory.mktemp("lightning")
    runs = {}

    def fit(name, seed=0, epochs=2, model=None, ckpt_path=None, checkpoint_dir=None):
        callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=INTENSITY)
        extra = [L.callbacks.ModelCheckpoint(dirpath=checkpoint_dir, save_last=True)] if checkpoint_dir else []
        trainer = L.Trainer(max_epochs=epochs, logger=L.loggers.CSVLogger(root), callbacks=[callback, *extra],
                            **trainer_kwargs(enable_checkpointing=bool(extra)))
        try:
            trainer.fit(model or TinyModel(), *loaders(seed), ckpt_path=ckpt_path)
        finally:
            runs[name] = callback.tracker.run_id

    fit("seed0")
    fit("seed1", seed=1)
    with pytest.raises(Boom):
        fit("seed2", seed=2, model=TinyModel(fail_at=(1, 2)), checkpoint_dir=root / "ckpt")
    crashed = {**runs}
    shutil.copytree(root / "lightning_logs", root.parent / f"{root.name}-after-the-crash")  # as reported then
    fit("seed2", seed=2, ckpt_path=root / "ckpt" / "last.ckpt", checkpoint_dir=root / "ckpt")
    assert runs["seed2"] == crashed["seed2"]  # the resume continued its run
    fit("3 epochs", epochs=3)
    return root, runs, crashed


@pytest.fixture(scope="module")
def hf_sweep(tmp_path_factory):
    """Three 2-epoch HF trainings into one output root, the third crashed at step 6 (in epoch 1)
    and resumed from its checkpoint of epoch 0."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                raise RuntimeError("crash at step 6")

    root = tmp_path_factory.mktemp("hf")
    runs = {}

    def train(name, seed, crash=False, resume=False):
        callback = EnergyCallback(intensity=INTENSITY, sensors=[scripted_sensor()])
        trainer = Trainer(model=tiny_model(), args=training_args(root, seed=seed, save_strategy="epoch"),
                          train_dataset=TokenDataset(TRAIN_SAMPLES, seed=seed),
                          eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                          callbacks=[callback, *([CrashAt()] if crash else [])])
        try:
            trainer.train(resume_from_checkpoint=str(root / "checkpoint-4") if resume else None)
        finally:
            runs[name] = callback.tracker.run_id

    train("seed0", 0)
    train("seed1", 1)
    for checkpoint in root.glob("checkpoint-*"):  # seed 2 resumes from its own checkpoint
        shutil.rmtree(checkpoint)
    with pytest.raises(RuntimeError, match="crash at step 6"):
        train("seed2", 2, crash=True)
    watch.settle()  # HF has no exception hook: the watch thread writes the crash up (~0.2 s)
    crashed = runs["seed2"]
    train("seed2", 2, resume=True)
    assert runs["seed2"] == crashed
    return root, runs


# -------------------------------------------------------------------------- by hand
def mean_se(values):
    values = list(values)
    if len(values) == 1:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def close(stat, values, rel=1e-9):
    mean, se = mean_se(values)
    assert stat["mean"] == pytest.approx(mean, rel=rel, abs=1e-18) and stat["n"] == len(values)
    if se is None:
        assert stat["se"] is None
    else:
        assert stat["se"] == pytest.approx(se, rel=1e-6, abs=1e-18)


def check_statement(data):
    """The statement for a paper cites the training's and the whole run's mean ± SE per run."""
    train, whole, several = data["total"]["train_energy_kwh"], data["total"]["energy_kwh"], len(data["runs"]) > 1
    assert energy_text(train["mean"], train["se"] if several else None) in data["statement"]
    assert energy_text(whole["mean"], whole["se"] if several else None) in data["statement"]


def train_rows_by_hand(records):
    """(run, attempt, epoch) -> [kWh, gCO2eq, samples, partial, validation kWh, seconds] of its records."""
    rows = defaultdict(lambda: [0.0, 0.0, 0, False, 0.0, 0.0])
    for r in records:
        if r.phase == "validation" and not any(t.phase == "train" for t in records
                                               if (t.run_id, t.attempt, t.epoch) == (r.run_id, r.attempt, r.epoch)):
            continue  # (a validation of an attempt that trained nothing in that epoch is no epoch's)
        if r.phase == "validation" and r.epoch is not None:
            rows[(r.run_id, r.attempt, r.epoch)][4] += r.energy_kwh
        elif r.phase == "train" and r.epoch is not None:
            row = rows[(r.run_id, r.attempt, r.epoch)]
            row[0] += r.energy_kwh
            row[1] += r.co2eq_g
            row[2] += r.samples
            row[3] |= r.partial
            row[5] += r.duration_s
    return rows


def check_configuration(data, records, runs, epochs, redone=None):
    """``data`` (one configuration of the json) holds ``runs`` and the numbers their records say:
    each epoch's complete trainings pooled over the runs, ``redone`` (run, epoch) cut short and
    redone a row of its own, phases and totals per run, mean ± SE."""
    mine = [r for r in records if r.run_id in runs]
    assert sorted(data["runs"]) == sorted(runs)
    rows = train_rows_by_hand(mine)
    expected = []
    for epoch in range(epochs):
        complete = [rows[key] for key in rows if key[2] == epoch and not rows[key][3]]
        assert len(complete) == len(runs)
        expected.append((str(epoch), complete))
    if redone:
        run, epoch = redone
        (cut,) = [rows[key] for key in rows if key[0] == run and key[2] == epoch and rows[key][3]]
        expected.append((f"{epoch} (attempt 0: cut short, redone)", [cut]))
    got = {row["label"]: row for row in data["epochs"]}
    assert sorted(got) == sorted(label for label, _ in expected)
    for label, parts in expected:
        row = got[label]
        close(row["energy_kwh"], [p[0] for p in parts])
        close(row["co2eq_g"], [p[1] for p in parts])
        close(row["seconds"], [p[5] for p in parts])
        close(row["j_per_sample"], [p[0] * J_PER_KWH / p[2] for p in parts])
        if any(p[4] for p in parts):
            close(row["val_energy_kwh"], [p[4] for p in parts])
        else:
            assert row["val_energy_kwh"] is None  # no validation ran in it: none, not one that cost 0
    per_run = {run: [r for r in mine if r.run_id == run] for run in runs}
    for phase, stat in data["phases"].items():
        close(stat["energy_kwh"], [sum(r.energy_kwh for r in per_run[run] if r.phase == phase) for run in runs])
        close(stat["co2eq_g"], [sum(r.co2eq_g for r in per_run[run] if r.phase == phase) for run in runs])
        assert stat["samples"]["mean"] == pytest.approx(
            statistics.mean(sum(r.samples for r in per_run[run] if r.phase == phase) for run in runs))
    total = data["total"]
    close(total["energy_kwh"], [sum(r.energy_kwh for r in per_run[run]) for run in runs])
    close(total["co2eq_g"], [sum(r.co2eq_g for r in per_run[run]) for run in runs])
    close(total["train_energy_kwh"], [sum(r.energy_kwh for r in per_run[run] if r.phase == "train") for run in runs])
    for run in runs:  # every attempt's records, the cut short epoch's included
        assert data["run_totals"][run]["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in per_run[run]), rel=1e-12)
    check_statement(data)
    return got


def unit_factor(name, units):
    return dict(units)[name]


def _half_a_digit(value, below_first=2):
    """Half the place ``below_first`` digits below ``value``'s first (3 significant digits: 2)."""
    return 0.51 * 10 ** (math.floor(math.log10(abs(value))) - below_first) if value else 1e-300


def matches(printed, stat, factor):
    """``printed`` (``1.23``, ``1.23 ± 0.04``, LaTeX's ``$1.23 \\pm 0.04$``) is ``stat`` in its unit, to
    its rounding: 3 significant digits alone, or both to the SE's second significant digit."""
    text = printed.replace("$", "").replace(" \\times 10^{", "e").replace("}", "").replace("\\pm", "±")
    value, _, error = text.partition("±")
    mean, se = stat["mean"] * factor, None if stat["se"] is None else stat["se"] * factor
    assert bool(error) == (se is not None), printed
    tolerance = _half_a_digit(mean) if se is None else _half_a_digit(se, 1)
    assert float(value) == pytest.approx(mean, abs=tolerance), printed
    if se is not None:
        assert float(error) == pytest.approx(se, abs=tolerance), printed


def check_markdown_matches_json(md, data):
    """The per-epoch table of the configuration's section says the json's numbers, in its units."""
    table = md.split("Per epoch (training, validation alongside)")[1].split("Totals by phase")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    e_unit = re.search(r"training \((\w+)", header[2]).group(1)
    m_unit = re.search(r"training CO2eq \((\w+)", header[3]).group(1)
    j_unit = re.search(r"per sample \((\w+)", header[4]).group(1)
    got = {row["label"]: row for row in data["epochs"] if row["in_every_run"]}
    seen = 0
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] not in got:
            continue
        row, seen = got[cells[0]], seen + 1
        matches(cells[2], row["energy_kwh"], unit_factor(e_unit, ENERGY_UNITS))
        matches(cells[3], row["co2eq_g"], unit_factor(m_unit, MASS_UNITS))
        matches(cells[4], row["j_per_sample"], unit_factor(j_unit, JOULE_UNITS))
    assert seen == len(got)
    totals = md.split("Totals by phase")[1]
    header = [cell.strip() for cell in totals.splitlines()[2].strip("|").split("|")]
    e_f = unit_factor(re.search(r"energy \((\w+)", header[2]).group(1), ENERGY_UNITS)
    m_f = unit_factor(re.search(r"CO2eq \((\w+)", header[3]).group(1), MASS_UNITS)
    whole = next(line for line in totals.splitlines() if line.startswith("| **whole run"))
    cells = [cell.strip() for cell in whole.strip("|").split("|")]
    matches(cells[2], data["total"]["energy_kwh"], e_f)
    matches(cells[3], data["total"]["co2eq_g"], m_f)


def check_csv_matches_records(text, records):
    by_hand = train_rows_by_hand(records)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {(row["run_id"], int(row["attempt"]), int(row["epoch"])) for row in rows} == set(by_hand)
    for row in rows:
        kwh, grams, samples, partial, *_ = by_hand[(row["run_id"], int(row["attempt"]), int(row["epoch"]))]
        assert float(row["energy_kwh"]) == pytest.approx(kwh, rel=1e-11)
        assert float(row["co2eq_g"]) == pytest.approx(grams, rel=1e-11)
        assert int(row["train_samples"]) == samples
        assert float(row["j_per_sample"]) == pytest.approx(kwh * J_PER_KWH / samples, rel=1e-11)
        assert (row["status"] != "complete") == partial


def check_latex_matches_json(latex, data, label):
    """The LaTeX table of ``label`` says the json's per-epoch means and the training and whole-run totals."""
    table = latex.split(f"\\label{{{label}}}")[1].split("\\end{tabular}")[0]
    head = re.search(r"Energy \((\w+)\) & CO\$_2\$eq \((\w+)\)", table)
    e_f, m_f = unit_factor(head.group(1), ENERGY_UNITS), unit_factor(head.group(2), MASS_UNITS)
    rows = {row["label"]: row for row in data["epochs"]}
    seen = 0
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.rstrip("\\ ").split("&")]
        if len(cells) < 4:
            continue
        name = re.sub(r" \[.*\]$", "", cells[0].replace("\\_", "_"))
        stat = (rows[name] if name in rows else
                {"Training": {"energy_kwh": data["total"]["train_energy_kwh"], "co2eq_g": data["total"]["train_co2eq_g"]},
                 "Whole run": data["total"]}.get(name))
        if stat is None:
            continue
        matches(cells[2], stat["energy_kwh"], e_f)
        matches(cells[3], stat["co2eq_g"], m_f)
        seen += 1
    assert seen == len(rows) + 2


def reported(root, *argv, capsys):
    assert main(["report", str(root), *argv]) == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------------------ Lightning
def test_a_lightning_seed_sweep_with_a_resumed_fit_reports_the_records_numbers(lightning_sweep, capsys):
    root, runs, _ = lightning_sweep
    assert len(list(root.glob("lightning_logs/version_*"))) == 5  # one per fit, the resume's included
    loaded = load(root)
    assert set(loaded.runs) == set(runs.values()) and not loaded.unfinished
    data = json.loads(reported(root, "--format", "json", capsys=capsys))
    repeats = [runs["seed0"], runs["seed1"], runs["seed2"]]
    groups = {tuple(sorted(c["runs"])): c for c in data["configurations"]}
    assert set(groups) == {tuple(sorted(repeats)), (runs["3 epochs"],)}
    sweep, longer = groups[tuple(sorted(repeats))], groups[(runs["3 epochs"],)]
    check_configuration(sweep, loaded.records, repeats, 2, redone=(runs["seed2"], 1))
    check_configuration(longer, loaded.records, [runs["3 epochs"]], 3)

    md = reported(root, capsys=capsys)
    index = data["configurations"].index(sweep) + 1
    section = md.split(f"## Configuration {index}:")[1].split("## Configuration")[0]
    check_markdown_matches_json(section, sweep)
    assert "1 epoch cut short by a crash and redone, both counted" in sweep["statement"]
    table = reported(root, "--format", "csv", capsys=capsys)
    check_csv_matches_records(table, loaded.records)
    assert {row["run_id"]: int(row["configuration"]) for row in csv.DictReader(io.StringIO(table))} == {
        run: number for number, c in enumerate(data["configurations"], start=1) for run in c["runs"]}
    latex = reported(root, "--format", "latex", capsys=capsys)
    check_latex_matches_json(latex, sweep, f"tab:greencallbacks-energy-{index}")
    check_latex_matches_json(latex, longer, f"tab:greencallbacks-energy-{data['configurations'].index(longer) + 1}")


def test_a_fit_crashed_and_not_yet_resumed_is_kept_apart_from_its_seeds(lightning_sweep, capsys):
    """The root as it was before the resume: seed 2 cut short, no repeat of seeds 0 and 1."""
    root, _, crashed = lightning_sweep
    then = root.parent / f"{root.name}-after-the-crash"
    loaded = load(then)
    assert set(loaded.runs) == set(crashed.values()) and not loaded.unfinished  # the exception wrote its summary
    data = json.loads(reported(then, "--format", "json", capsys=capsys))
    seeds = sorted([crashed["seed0"], crashed["seed1"]])
    groups = {tuple(sorted(c["runs"])): c for c in data["configurations"]}
    assert set(groups) == {tuple(seeds), (crashed["seed2"],)}
    alone = groups[(crashed["seed2"],)]
    assert "(1 completed)" in alone["description"] and "cut short by an exception or interrupt, 1 completed" in alone["statement"]
    assert [row["label"] for row in alone["epochs"]] == ["0", "1 (partial)"]
    check_configuration(groups[tuple(seeds)], loaded.records, seeds, 2)
    check_csv_matches_records(reported(then, "--format", "csv", capsys=capsys), loaded.records)


def test_run_id_compare_zones_and_lifecycle_over_the_sweep(lightning_sweep, capsys):
    root, runs, _ = lightning_sweep
    records = load(root).records
    resumed = runs["seed2"]
    mine = [r for r in records if r.run_id == resumed]
    (alone,) = json.loads(reported(root, "--run-id", resumed, "--format", "json", capsys=capsys))["configurations"]
    check_configuration(alone, records, [resumed], 2, redone=(resumed, 1))
    assert all(row["energy_kwh"]["se"] is None for row in alone["epochs"])

    data = json.loads(reported(root, "--format", "json", "--compare-zones", "FR,DE", capsys=capsys))
    for configuration in data["configurations"]:
        energy = statistics.mean(sum(r.energy_kwh for r in records if r.run_id == run) for run in configuration["runs"])
        for row in configuration["compare_zones"]:
            assert row["co2eq_g"] == pytest.approx(energy * row["g_per_kwh"], rel=1e-9)

    assert main(["lifecycle", str(root), "--inferences", "1000", "--json"]) == 0
    cycles = {c["run_id"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(cycles) == set(runs.values())
    for run, cycle in cycles.items():
        theirs = [r for r in records if r.run_id == run]
        train = [r for r in theirs if r.phase == "train"]
        assert cycle["training_j"] == pytest.approx(sum(r.energy_kwh for r in train) * J_PER_KWH, rel=1e-12)
        assert cycle["run_total_j"] == pytest.approx(sum(r.energy_kwh for r in theirs) * J_PER_KWH, rel=1e-12)
        assert cycle["samples_trained"] == sum(r.samples for r in train)
        assert cycle["samples_per_epoch"] == 32
    # The resumed run's epoch 1: the training redone from the epoch's start, as the report's row of
    # it (the crash's part, its own "cut short, redone" row, was spent too: it is in T, not in T_e).
    epoch1 = sum(r.energy_kwh for r in mine if r.phase == "train" and r.epoch == 1 and not r.partial) * J_PER_KWH
    assert cycles[resumed]["training_j_per_epoch"][1] == pytest.approx(epoch1, rel=1e-12)
    (row,) = [row for row in alone["epoch_rows"] if row["epoch"] == 1 and not row["redone"]]
    assert row["energy_kwh"] * J_PER_KWH == pytest.approx(epoch1, rel=1e-12)
    # The sweep as the search for the resumed run's model: the other runs, each whole, once.
    assert main(["lifecycle", str(root), "--run-id", resumed, "--search", str(root), "--inferences", "0", "--json"]) == 0
    cycle = json.loads(capsys.readouterr().out)
    others = [r for r in records if r.run_id != resumed]
    assert cycle["search_trials"] == 3
    assert cycle["search_j"] == pytest.approx(sum(r.energy_kwh for r in others) * J_PER_KWH, rel=1e-12)
    assert cycle["lifecycle_energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)


# ------------------------------------------------------------------------------------- HF
def test_hf_trainings_into_one_output_root_with_a_resumed_one_report_the_records_numbers(hf_sweep, capsys):
    root, runs = hf_sweep
    loaded = load(root)
    assert set(loaded.runs) == set(runs.values()) and not loaded.unfinished
    data = json.loads(reported(root, "--format", "json", capsys=capsys))
    (sweep,) = data["configurations"]
    got = check_configuration(sweep, loaded.records, list(runs.values()), 2, redone=(runs["seed2"], 1))
    assert got["1 (attempt 0: cut short, redone)"]["run_ids"] == [runs["seed2"]]
    check_markdown_matches_json(reported(root, capsys=capsys), sweep)
    check_csv_matches_records(reported(root, "--format", "csv", capsys=capsys), loaded.records)
    check_latex_matches_json(reported(root, "--format", "latex", capsys=capsys), sweep, "tab:greencallbacks-energy")
    (alone,) = json.loads(reported(root, "--run-id", runs["seed1"], "--format", "json", capsys=capsys))["configurations"]
    check_configuration(alone, loaded.records, [runs["seed1"]], 2)
