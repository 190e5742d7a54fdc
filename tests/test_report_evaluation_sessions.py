"""Runs that trained nothing (a validate, test or predict session of their own) in one log root.

With no training to group them by, every such run of one framework, sensors and grid was one
configuration: a validate of 16 samples and a predict of 32 were taken for repeats, and the report
gave a mean ± SE over them ("samples (mean)" 8 validated) for a statement a paper cites.
"""

from __future__ import annotations

import json

import pytest

from greencallbacks.cli import main
torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from tests.lightning_models import Boom, flavour, loaders, trainer_kwargs  # noqa: E402


def _session(tmp_path, run_id, call):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    train, val = loaders()
    callback = EnergyCallback(intensity=100.0, output_dir=tmp_path, run_id=run_id)
    trainer = L.Trainer(callbacks=[callback], logger=False, **trainer_kwargs())
    if call == "validate":
        trainer.validate(TinyModel(), val)
    else:
        trainer.predict(TinyModel(), train)


def _fails_in_validation(TinyModel):
    """TinyModel whose validation fails in its second batch."""

    class FailsInValidation(TinyModel):
        def validation_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise Boom("validation")
            return super().validation_step(batch, batch_idx)

    return FailsInValidation


def test_a_validate_session_and_a_predict_session_are_no_repeats_but_two_validates_are(tmp_path, capsys):
    for run_id, call in (("val-1", "validate"), ("val-2", "validate"), ("pred", "predict")):
        _session(tmp_path, run_id, call)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["configurations"]
    assert sorted(sorted(group["runs"]) for group in groups) == [["pred"], ["val-1", "val-2"]]
    (validates,) = [group for group in groups if group["runs"] != ["pred"]]
    assert validates["phases"]["validation"]["samples"]["mean"] == 16 and "predict" not in validates["phases"]


def test_evaluation_sessions_that_failed_are_each_alone(tmp_path, capsys):
    """Two validates failed in their second batch, and a fit failed in its sanity check beside a
    validate failed before its first batch (neither wrote a phase but its gap), were pooled as repeats
    with a mean ± SE; like a training cut short, each failed session is alone."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    train, val = loaders()
    FailsInValidation = _fails_in_validation(TinyModel)

    def trainer(run_id, **kwargs):
        callback = EnergyCallback(intensity=100.0, output_dir=tmp_path, run_id=run_id)
        return L.Trainer(callbacks=[callback], logger=False, **trainer_kwargs(**kwargs))

    for run_id in ("failed-1", "failed-2"):
        with pytest.raises(Boom):
            trainer(run_id).validate(FailsInValidation(), val)
    with pytest.raises(Boom):  # the sanity check's second batch
        trainer("sanity", max_epochs=1, num_sanity_val_steps=2).fit(FailsInValidation(), train, val)
    with pytest.raises(RuntimeError, match="dataloader_idx"):  # two loaders, a validation_step of one
        trainer("no-batch").validate(TinyModel(), [val, val])
    for run_id in ("val-1", "val-2"):
        trainer(run_id).validate(TinyModel(), val)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["configurations"]
    assert sorted(sorted(group["runs"]) for group in groups) == [
        ["failed-1"], ["failed-2"], ["no-batch"], ["sanity"], ["val-1", "val-2"]]


def test_evaluation_sessions_grouped_apart_read_apart_and_the_grouping_rule_is_said(tmp_path, capsys):
    """A validate of 16 samples, one of 8 and a predict of 32 are no repeats, yet every heading and
    LaTeX caption read "0 training epoch(s)" alike; two failed validates, each alone, read as ones
    that ended well, in captions that could not be told apart. The grouping rule said nothing of a
    failed session being alone."""
    from torch.utils.data import DataLoader, Subset

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    train, val = loaders()
    FailsInValidation = _fails_in_validation(TinyModel)

    def trainer(run_id):
        callback = EnergyCallback(intensity=100.0, output_dir=tmp_path, run_id=run_id)
        return L.Trainer(callbacks=[callback], logger=False, **trainer_kwargs())

    trainer("val-16").validate(TinyModel(), val)
    trainer("val-8").validate(TinyModel(), DataLoader(Subset(val.dataset, range(8)), batch_size=8))
    trainer("pred-32").predict(TinyModel(), train)
    for run_id in ("failed-1", "failed-2"):
        with pytest.raises(Boom):
            trainer(run_id).validate(FailsInValidation(), val)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    described = {group["runs"][0]: group["description"] for group in data["configurations"]}
    assert "no training (validation of 16 samples)" in described["val-16"]
    assert "no training (validation of 8 samples)" in described["val-8"]
    assert "no training (prediction of 32 samples)" in described["pred-32"]
    for run_id in ("failed-1", "failed-2"):
        assert "no training (validation of 8 samples, cut short by an exception or interrupt)" in described[run_id]
        (failed,) = [group for group in data["configurations"] if group["runs"] == [run_id]]
        assert "; cut short by an exception or interrupt) used" in failed["statement"]
    assert ("trained nothing and failed (a validate, test or predict session whose last record is partial)"
            in data["grouped_by"])

    assert main(["report", str(tmp_path), "--format", "latex"]) == 0
    captions = [line for line in capsys.readouterr().out.splitlines() if line.startswith(r"\caption{")]
    assert len(captions) == 5 and len(set(captions)) == 5, captions
    assert sum("; run failed-1)" in caption for caption in captions) == 1  # alike but for their run
    assert main(["report", str(tmp_path)]) == 0
    markdown = capsys.readouterr().out
    assert f"Runs are grouped by configuration ({data['grouped_by']})" in markdown


def test_the_cli_lists_a_session_that_trained_nothing_as_its_heading_reads(tmp_path, capsys):
    """The runs found, listed on stderr, said "0 training epoch(s)" of a validate, a predict and a
    failed validate alike, where the report's headings name their phases and samples."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    train, val = loaders()

    def trainer(run_id, **kwargs):
        callback = EnergyCallback(intensity=100.0, output_dir=tmp_path, run_id=run_id)
        return L.Trainer(callbacks=[callback], logger=False, **trainer_kwargs(**kwargs))

    trainer("fit", max_epochs=2).fit(TinyModel(), train, val)
    trainer("val").validate(TinyModel(), val)
    trainer("pred").predict(TinyModel(), train)
    with pytest.raises(Boom):
        trainer("failed").validate(_fails_in_validation(TinyModel)(), val)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    listed = {line.split(":")[0].strip(): line for line in captured.err.splitlines() if line.startswith("  ")}
    assert ", 2 training epoch(s), in " in listed["fit"]
    assert ", no training (validation of 16 samples), in " in listed["val"]
    assert ", no training (prediction of 32 samples), in " in listed["pred"]
    assert ", no training (validation of 8 samples, cut short by an exception or interrupt), in " in listed["failed"]
    for group in json.loads(captured.out)["configurations"]:  # each session's heading reads as its line
        if group["runs"] != ["fit"]:
            assert group["description"].split(", sensors")[0] in listed[group["runs"][0]]
