import pytest

from greencallbacks.lifecycle import lifecycle
from greencallbacks.records import Record

KWH = 3.6e6


def rec(run_id, phase, epoch, energy_j, samples, seq, g_per_kwh=500.0, partial=False):
    return Record(
        run_id=run_id, phase=phase, epoch=epoch, seq=seq, start_time="2026-11-23T10:00:00+00:00",
        duration_s=1.0, samples=samples, it_energy_kwh=energy_j / KWH, energy_kwh=energy_j / KWH,
        co2eq_g=energy_j / KWH * g_per_kwh, intensity_gco2eq_per_kwh=g_per_kwh, intensity_source="test",
        pue=1.0, energy_j_per_sample=energy_j / samples if samples else None, co2eq_g_per_sample=None,
        partial=partial,
    )


def trained_run():
    # 3 epochs of 1000 samples at 5000 J each; validation 200 samples at 200 J; a test of 500 samples at 250 J.
    records, seq = [], 0
    for epoch in range(3):
        records.append(rec("model", "train", epoch, 5000.0, 1000, seq)); seq += 1
        records.append(rec("model", "validation", epoch, 200.0, 200, seq)); seq += 1
        records.append(rec("model", "other", epoch, 50.0, 0, seq)); seq += 1
    records.append(rec("model", "test", None, 250.0, 500, seq))
    return records


def test_training_inference_and_overhead_factor_by_hand():
    lc = lifecycle(trained_run())
    assert lc.training_j == pytest.approx(15000.0)
    assert (lc.epochs, lc.samples_per_epoch) == (3, 1000)
    assert lc.training_j_per_epoch == pytest.approx((5000.0, 5000.0, 5000.0))
    assert lc.training_j_per_sample == pytest.approx(5.0)  # T / (D x E)
    assert lc.inference_phase == "test"  # test beats validation as the deployment-like phase
    assert lc.inference_j_per_sample == pytest.approx(0.5)
    assert lc.overhead_factor == pytest.approx(10.0)  # a = T / (I D E) = 5 / 0.5
    assert lc.overhead_share == pytest.approx(0.9)
    assert lc.run_total_j == pytest.approx(15000 + 600 + 150 + 250)


def test_search_cost_lifecycle_energy_and_break_even():
    trials = [rec("trial-a", "train", 0, 2000.0, 100, 0), rec("trial-a", "validation", 0, 100.0, 10, 1),
              rec("trial-b", "train", 0, 3000.0, 100, 0)]
    lc = lifecycle(trained_run(), search=trials)
    assert lc.search_trials == 2 and lc.search_j == pytest.approx(5100.0)
    assert lc.run_other_j == pytest.approx(600 + 150 + 250)  # V: validation, gaps and the test
    assert lc.energy_j(inferences=1e6) == pytest.approx(5100 + 15000 + 1000 + 1e6 * 0.5)
    assert lc.break_even_inferences == pytest.approx((5100 + 15000 + 1000) / 0.5)
    assert lc.co2eq_g(inferences=0) == pytest.approx((5100 + 15000 + 1000) / KWH * 500.0)
    d = lc.to_dict(inferences=1000)
    assert d["lifecycle_energy_kwh"] == pytest.approx((21100 + 500) / KWH)
    assert d["run_other_j"] == pytest.approx(1000.0) and d["run_other_co2eq_g"] == pytest.approx(1000 / KWH * 500.0)


def test_validation_is_used_for_inference_when_nothing_else_and_said_so():
    records = [r for r in trained_run() if r.phase != "test"]
    lc = lifecycle(records)
    assert lc.inference_phase == "validation" and lc.inference_j_per_sample == pytest.approx(1.0)
    assert any("validation" in n for n in lc.notes)


def test_without_inference_the_unknowns_are_none_not_zero():
    records = [r for r in trained_run() if r.phase == "train"]
    lc = lifecycle(records)
    assert lc.inference_j_per_sample is None and lc.overhead_factor is None and lc.break_even_inferences is None


def test_several_runs_need_a_run_id():
    records = trained_run() + [rec("other-run", "train", 0, 1.0, 1, 0)]
    with pytest.raises(ValueError, match="run_id"):
        lifecycle(records)
    assert lifecycle(records, run_id="model").training_j == pytest.approx(15000.0)
    with pytest.raises(ValueError, match="nope"):
        lifecycle(records, run_id="nope")


def test_an_epoch_redone_after_a_resume_counts_in_t_but_not_in_d():
    import dataclasses

    records = trained_run()
    # Attempt 0 crashed 400 samples into epoch 2 (2000 J); attempt 1 redid it whole.
    crashed = dataclasses.replace(rec("model", "train", 2, 2000.0, 400, 90), partial=True)
    records = [dataclasses.replace(r, attempt=1) if r.epoch == 2 else r for r in records] + [crashed]
    lc = lifecycle(records)
    assert lc.training_j == pytest.approx(3 * 5000 + 2000)  # spent, so counted
    assert lc.epochs == 3 and lc.samples_per_epoch == pytest.approx(1000)  # not (3000 + 400) / 3
    # T over the samples trained: the crashed try's 400 too, whose joules are in T (5 J each throughout).
    assert lc.samples_trained == 3400 and lc.training_j_per_sample == pytest.approx(17000 / 3400)
    assert any("partial" in note and "in T" in note for note in lc.notes)


def test_an_epoch_resumed_part_way_is_no_epoch_of_d():
    """A checkpoint inside epoch 1 (after 600 of 1000 samples), a crash after 800, a resume that
    trains the last 400: the resumed part is a whole record of its attempt, and was averaged into D
    as an epoch (D 800 for 1000, training J per sample 25 % high)."""
    import dataclasses

    records = [r for r in trained_run() if r.epoch != 1 or r.phase != "train"]
    records.append(rec("model", "train", 1, 4000.0, 800, 90, partial=True))
    records.append(dataclasses.replace(rec("model", "train", 1, 2000.0, 400, 91), attempt=1))
    lc = lifecycle(records)
    assert lc.samples_per_epoch == pytest.approx(1000)  # from epochs 0 and 2, each whole in one attempt
    assert lc.training_j == pytest.approx(5000 + 4000 + 2000 + 5000)


def test_d_after_a_kill_inside_an_epoch_is_the_reports_whole_epoch_not_a_mean():
    """Killed inside epoch 2 after a mid-epoch checkpoint (no record), resumed from it: attempt 1
    trains the last 32 of its 64 samples. D was the mean 56 of 64, 64, 32, 64; the report says 64
    (epoch 2: 32). T per sample is over the 224 samples the records trained."""
    import dataclasses

    from greencallbacks.report.data import configuration

    def step(r, n):
        return dataclasses.replace(r, step=n)

    records = [step(rec("k", "train", 0, 640.0, 64, 0), 4), step(rec("k", "train", 1, 640.0, 64, 1), 8),
               dataclasses.replace(rec("k", "train", 2, 320.0, 32, 0), step=12, attempt=1),
               dataclasses.replace(rec("k", "train", 3, 640.0, 64, 1), step=16, attempt=1),
               dataclasses.replace(rec("k", "test", None, 50.0, 100, 2), attempt=1)]
    lc = lifecycle(records)
    assert lc.samples_per_epoch == configuration(records)["samples_per_epoch"] == 64  # was 56
    assert lc.samples_trained == 224 and lc.training_j_per_sample == pytest.approx(2240.0 / 224)
    assert lc.overhead_factor == pytest.approx(10.0 / 0.5)


def test_a_training_again_stopped_after_a_batch_is_no_epochs_cost():
    """A budget spent stops a resume after one batch (HF, Keras): the resume from epoch 0's
    checkpoint trained 8 samples of epoch 1 again, a complete record (no exception). It was billed
    as a whole epoch trained again: T per sample over D x (E + A) = 120 samples for the 88 trained
    (a < 1, an "overhead share" of -21 %), and epoch 1's cost the stub's."""
    import dataclasses

    def step(r, n, **more):
        return dataclasses.replace(r, step=n, **more)

    records = [step(rec("h", "train", 0, 200.0, 40, 0), 5), step(rec("h", "train", 1, 200.0, 40, 1), 10),
               step(rec("h", "validation", 1, 8.0, 16, 2), 10),
               step(rec("h", "train", 1, 40.0, 8, 3), 6, attempt=1), step(rec("h", "validation", 1, 8.0, 16, 4), 6, attempt=1)]
    lc = lifecycle(records)
    assert lc.training_j == pytest.approx(440.0) and lc.samples_trained == 88
    assert lc.training_j_per_sample == pytest.approx(5.0)  # was 440 / 120
    assert lc.training_j_per_epoch == pytest.approx((200.0, 200.0))  # was (200, 40): the stub's
    assert lc.overhead_factor == pytest.approx(10.0) and lc.overhead_share == pytest.approx(0.9)
    assert lc.samples_per_epoch == 40 and lc.epochs_trained_again == 1  # its energy was spent twice
    from greencallbacks.report import data

    config = data.configuration(records)
    assert config["epoch_samples"] == [[0, 40], [1, 40]] and config["steps_per_epoch"] == 5  # was epoch 1: 8
    assert "epoch 1: 8" not in data.statement(records)


def test_a_resume_from_an_older_checkpoint_inside_an_epoch_is_no_stop():
    """Killed after checkpoints at steps 9 and 12 of epoch 1; resumed from step 12, then again
    from step 9: the second resume trains the rest of epoch 1 (56 of 64 samples) and goes on. It
    was taken for a budget stop, and epoch 1's T summed both trainings of it (1050 J for 750)."""
    import dataclasses

    def at(r, step, attempt):
        return dataclasses.replace(r, step=step, attempt=attempt)

    records = [at(rec("o", "train", 0, 1200.0, 64, 0), 8, 0), at(rec("o", "train", 1, 600.0, 32, 1, partial=True), 12, 0),
               at(rec("o", "train", 1, 450.0, 32, 2), 16, 1), at(rec("o", "train", 2, 1200.0, 64, 3), 24, 1),
               at(rec("o", "train", 1, 750.0, 56, 4), 16, 2), at(rec("o", "train", 2, 1200.0, 64, 5), 24, 2)]
    lc = lifecycle(records)
    assert lc.training_j_per_epoch == pytest.approx((1200.0, 750.0, 1200.0))


def test_uncounted_samples_make_per_sample_figures_unknown_not_zero():
    import dataclasses

    records = [dataclasses.replace(r, samples=0, samples_counted=False) if r.phase in ("train", "test") else r
               for r in trained_run()]
    lc = lifecycle(records)
    assert lc.samples_per_epoch is None and lc.training_j_per_sample is None and lc.overhead_factor is None
    assert lc.inference_phase == "validation"  # the test phase's samples were not counted
    assert any("no training epoch's samples were counted whole: D is unknown" in note for note in lc.notes)
    assert any("training batches could not be counted: T per sample and a are unknown" in note for note in lc.notes)


def test_embodied_is_kept_apart_and_summed_only_in_its_own_field():
    import dataclasses

    records = [dataclasses.replace(r, embodied_co2eq_g=0.01 * r.duration_s * (r.phase != "other") + 0.001)
               for r in trained_run()]
    lc = lifecycle(records)
    assert lc.training_embodied_co2eq_g == pytest.approx(3 * 0.011)
    assert lc.inference_embodied_co2eq_g_per_sample == pytest.approx(0.011 / 500)  # from the test phase, like I
    operational = lc.co2eq_g(1000)
    out = lc.to_dict(inferences=1000)
    assert out["lifecycle_co2eq_g"] == pytest.approx(operational)  # unchanged by embodied
    # V's embodied: 3 validations (0.011 each), 3 gaps (0.001 each) and the test (0.011).
    assert lc.run_other_embodied_co2eq_g == pytest.approx(3 * 0.011 + 3 * 0.001 + 0.011)
    assert out["lifecycle_embodied_co2eq_g"] == pytest.approx(3 * 0.011 + 0.047 + 1000 * 0.011 / 500)
    assert out["lifecycle_operational_plus_embodied_co2eq_g"] == pytest.approx(operational + out["lifecycle_embodied_co2eq_g"])
    # Records without it: unknown, and no sum is offered.
    plain = lifecycle(trained_run())
    assert plain.embodied_co2eq_g(1000) is None and "lifecycle_embodied_co2eq_g" not in plain.to_dict(inferences=1000)


def test_the_trained_run_among_the_search_records_is_counted_once():
    """A sweep's best trial trained as the model: its training is T, the rest of it V, and CT holds the other trials."""
    best = trained_run()
    trials = [rec("trial-a", "train", 0, 2000.0, 100, 0), rec("trial-b", "train", 0, 3000.0, 100, 0)]
    lc = lifecycle(best, search=trials + best)
    assert lc.search_trials == 2 and lc.search_j == pytest.approx(5000.0)
    assert lc.energy_j(inferences=0) == pytest.approx(5000.0 + 15000.0 + 1000.0)
    assert ("the trained run model is among the search records: its training phases are T, the rest of it V, "
            "none of it in CT") in lc.notes
    assert not any("search records" in note for note in lifecycle(best, search=trials).notes)


def with_embodied(records):
    import dataclasses

    return [dataclasses.replace(r, embodied_co2eq_g=r.energy_kwh * 7.0) for r in records]


def sweep_trial(run_id, g_per_kwh):
    """A trial as a sweep logs it: training, validation and a gap each epoch, then a test."""
    records, seq = [], 0
    for epoch in range(2):
        for phase, energy_j, samples in (("train", 20.0, 10), ("validation", 20.0, 10), ("other", 0.3, 0)):
            records.append(rec(run_id, phase, epoch, energy_j, samples, seq, g_per_kwh=g_per_kwh)); seq += 1
    records.append(rec(run_id, "test", None, 5.0, 50, seq, g_per_kwh=g_per_kwh))
    return with_embodied(records)


def whole(records):
    return (sum(r.energy_kwh for r in records) * KWH, sum(r.co2eq_g for r in records),
            sum(r.embodied_co2eq_g for r in records))


def test_a_sweep_that_holds_the_trained_run_is_its_records_whole_at_no_inference():
    """Two trials of a sweep, the first trained as the model: its validation, gaps and test were in
    neither CT (left out as the trained run) nor T (training phases alone), 40 % of the sweep lost."""
    sweep = sweep_trial("trial_a", 100.0) + sweep_trial("trial_b", 300.0)
    lc = lifecycle(sweep, search=sweep, run_id="trial_a")
    energy, co2eq, embodied = whole(sweep)
    assert lc.energy_j(inferences=0) == pytest.approx(energy, rel=1e-9)
    assert lc.co2eq_g(inferences=0) == pytest.approx(co2eq, rel=1e-9)
    assert lc.embodied_co2eq_g(inferences=0) == pytest.approx(embodied, rel=1e-9)
    assert lc.training_j == pytest.approx(40.0)  # T is still the training phases alone
    assert lc.run_other_j == pytest.approx(40.0 + 0.6 + 5.0)
    assert lc.break_even_inferences == pytest.approx(energy / lc.inference_j_per_sample)


def test_the_trained_run_outside_the_search_counts_whole_like_each_trial():
    """Each trial's validation, gaps and test are in CT: the trained run's are in V, not left out."""
    model, trials = with_embodied(trained_run()), sweep_trial("t1", 100.0) + sweep_trial("t2", 300.0)
    lc = lifecycle(model, search=trials)
    (model_j, model_g, model_embodied), (trials_j, trials_g, trials_embodied) = whole(model), whole(trials)
    assert lc.search_j == pytest.approx(trials_j, rel=1e-9)
    assert lc.energy_j(inferences=0) == pytest.approx(trials_j + model_j, rel=1e-9)
    assert lc.co2eq_g(inferences=0) == pytest.approx(trials_g + model_g, rel=1e-9)
    assert lc.embodied_co2eq_g(inferences=0) == pytest.approx(trials_embodied + model_embodied, rel=1e-9)
    assert lc.training_j + lc.run_other_j == pytest.approx(lc.run_total_j, rel=1e-9)


def test_the_lifecycle_command_shows_v_and_the_formula(tmp_path, capsys):
    import json

    from greencallbacks.cli import main
    from greencallbacks.records import RecordWriter

    writer = RecordWriter(tmp_path / "model" / "energy-records.jsonl")
    for record in trained_run():
        writer.write(record)
    assert main(["lifecycle", str(tmp_path / "model"), "--inferences", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_other_j"] == pytest.approx(1000.0)
    assert data["lifecycle_energy_kwh"] * KWH == pytest.approx(16000.0)  # T + V, the run whole
    assert main(["lifecycle", str(tmp_path / "model"), "--inferences", "0"]) == 0
    out = capsys.readouterr().out
    assert "V  rest of run: 1000 J" in out and "(LC = CT + T + V + e x I)" in out
    assert f"LC for 0 inferences: {16000 / KWH:.4g} kWh" in out


def test_a_training_that_failed_between_two_epochs_is_said():
    import dataclasses

    records = [r for r in trained_run() if r.phase != "test"]
    records[-1] = dataclasses.replace(records[-1], partial=True)  # the gap after the last epoch
    failed = lifecycle(records)
    assert any("ended in a failure after an epoch" in note and "its energy is in V" in note for note in failed.notes)
    assert failed.run_other_j == pytest.approx(3 * 200 + 3 * 50)  # the gap's record is V's, not T's
    assert not any("ended in a failure" in note for note in lifecycle(trained_run()).notes)


def test_epochs_trained_again_from_an_older_checkpoint_are_said_and_not_one_epochs_cost():
    """A resume from epoch 0's checkpoint after 3 epochs trained epochs 1 and 2 again: T keeps both
    trainings (the energy was spent), but each epoch's cost is one training's and T per sample is
    over the 5 epochs' samples trained, not 3 (the report's rule, which says 2 trained again)."""
    import dataclasses

    from greencallbacks.report.data import epochs_trained_again

    first = [dataclasses.replace(r, step=4 * (r.epoch + 1)) if r.epoch is not None else r
             for r in trained_run() if r.phase != "test"]
    again = [dataclasses.replace(r, attempt=1, seq=r.seq + 100, energy_kwh=4000.0 / KWH, co2eq_g=4000.0 / KWH * 500)
             for r in first if r.phase == "train" and r.epoch in (1, 2)]
    records = first + again
    lc = lifecycle(records)
    assert epochs_trained_again(records) == lc.epochs_trained_again == 2
    assert lc.training_j == pytest.approx(3 * 5000 + 2 * 4000)  # spent, so counted
    assert lc.training_j_per_epoch == pytest.approx((5000.0, 4000.0, 4000.0))  # each epoch's last training
    assert lc.training_j_per_sample == pytest.approx(23000 / 5000)  # T over the samples trained
    assert any(note.startswith("2 epochs trained again") and "T counts both" in note for note in lc.notes)
    assert lc.to_dict()["epochs_trained_again"] == 2
    assert not any("trained again" in note for note in lifecycle(first).notes)
