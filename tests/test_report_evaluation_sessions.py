"""Runs that trained nothing (a validate, test or predict session of their own) in one log root.

With no training to group them by, every such run of one framework, sensors and grid was one
configuration: a validate of 16 samples and a predict of 32 were taken for repeats, and the report
gave a mean ± SE over them ("samples (mean)" 8 validated) for a statement a paper cites.
"""

from __future__ import annotations

import json

from greencallbacks.cli import main
from tests.lightning_models import flavour, loaders, trainer_kwargs


def _session(tmp_path, run_id, call):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    train, val = loaders()
    callback = EnergyCallback(intensity=100.0, output_dir=tmp_path, run_id=run_id)
    trainer = L.Trainer(callbacks=[callback], logger=False, **trainer_kwargs())
    if call == "validate":
        trainer.validate(TinyModel(), val)
    else:
        trainer.predict(TinyModel(), train)


def test_a_validate_session_and_a_predict_session_are_no_repeats_but_two_validates_are(tmp_path, capsys):
    for run_id, call in (("val-1", "validate"), ("val-2", "validate"), ("pred", "predict")):
        _session(tmp_path, run_id, call)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["configurations"]
    assert sorted(sorted(group["runs"]) for group in groups) == [["pred"], ["val-1", "val-2"]]
    (validates,) = [group for group in groups if group["runs"] != ["pred"]]
    assert validates["phases"]["validation"]["samples"]["mean"] == 16 and "predict" not in validates["phases"]
