"""What Lightning's own loggers received, read back from disk, against the run's records.

TensorBoard event files, the CSV logger's metrics.csv, an MLflow file store and (where installed)
an offline W&B run, several at once, across the flows people go through: a fit crashing inside
an epoch and resumed in a new Trainer from a checkpoint saved inside it or at an epoch's end (with
gradient accumulation), Ctrl-C in a callback's hook (Lightning's graceful shutdown) with
``OnExceptionCheckpoint`` or then ``ckpt_path="last"``, a second ``fit`` on the same Trainer, and
validate / test / predict after a fit. In every logger and every attempt:

- the step values (``energy_kwh_total``, ``co2eq_g_total``, ``power_w`` at ``log_every_n_steps``)
  sit at the steps of a metric the model logs per step (Lightning's own logging steps);
- the run's values only grow, an attempt going on from the run's total (never from 0), each
  step value at most the next epoch's total and never above the run's summary;
- the epoch totals are the records summed up to each training epoch's end; the last one is the
  run's total at its last training end (``logged_total_matches``);
- ``co2eq_g_total`` is the energy at the fixed intensity, and a ``power_w`` goes with every step value;
- evaluation values are their records, at the step Lightning logs everything else at;
- ``greencallbacks report`` on the output directory gives the run's summary.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from flow_invariants import check_run, logged_total_matches, meter_threads, report_total_matches  # noqa: E402
from lightning_models import Boom, flavour, loaders, step_logging, trainer_kwargs  # noqa: E402
from test_lightning import csv_scalars, mlflow_scalars  # noqa: E402
from test_live import split_points, two_optimizers  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
POWER_W, INTENSITY = 50.0, 300.0
REL = 1e-6  # TensorBoard keeps float32


@pytest.fixture
def quiet_trackers(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for name, value in dict(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true", WANDB_CONSOLE="off").items():
        monkeypatch.setenv(name, value)


def data(samples=40, batch=4):
    generator = torch.Generator().manual_seed(samples)
    return DataLoader(TensorDataset(torch.randn(samples, 4, generator=generator),
                                    torch.randn(samples, 1, generator=generator)), batch_size=batch)


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """As ``test_lightning.tensorboard_scalars``, in the order written: each call after a fit's end
    opens an event file of its own, and the reader takes the files by name (``...0``, ``...10``, ``...2``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in sorted(accumulator.Scalars(tag), key=lambda e: e.wall_time)]
            for tag in accumulator.Tags()["scalars"]}


class Loggers:
    """TensorBoard, CSV and MLflow (file store) loggers of one attempt, read back as
    ``{logger: {metric: [(step, value)]}}``."""

    def __init__(self, L, root: Path, name: str, wandb: bool = False):
        self.uri, self.wandb_dir = f"file:{root / 'mlruns'}", root / f"wandb-{name}"
        self.all = [L.loggers.TensorBoardLogger(root / "tb", name=name), L.loggers.CSVLogger(root / "csv", name=name),
                    L.loggers.MLFlowLogger(experiment_name=name, tracking_uri=self.uri)]
        if wandb:
            self.all.append(L.loggers.WandbLogger(project="energy", save_dir=str(self.wandb_dir), offline=True))

    def read(self) -> dict[str, dict]:
        tensorboard, csv_logger, mlflow = self.all[:3]
        read_back = {"tensorboard": tensorboard_scalars(tensorboard.log_dir),
                     "csv": csv_scalars(Path(csv_logger.log_dir) / "metrics.csv"),
                     "mlflow": mlflow_scalars(self.uri, mlflow.run_id)}
        if len(self.all) > 3:
            import wandb

            from wandb_offline import read_history_with, run_files

            wandb.finish()
            (run_file,) = run_files(self.wandb_dir)
            scalars = read_back["wandb"] = {}
            epochs = len(read_back["csv"].get("energy_kwh", []))  # W&B writes from a process of its own
            for row in read_history_with(run_file, "energy_kwh", epochs):
                for key, value in row.items():
                    if not key.startswith("_") and key != "trainer/global_step":
                        scalars.setdefault(key, []).append((row["trainer/global_step"], value))
        return read_back


def energy_callback(EnergyCallback, output_dir):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=INTENSITY,
                          output_dir=output_dir)


def check_logged(attempts: list[dict], run_id: str, output_dir: Path, *, interrupted_last_step: bool = False):
    """The invariants of the module docstring for one run, given what each of its attempts'
    loggers received, in order; ``interrupted_last_step``: the first attempt ended inside a
    logging step's batch end, after our value and before Lightning's own."""
    assert not meter_threads()
    records = check_run(run_id, [output_dir], power_w=POWER_W)
    summary_kwh = sum(r.energy_kwh for r in records)  # check_run: the summary's, where it is this run's
    by_logger = {where for scalars in attempts for where in scalars}
    for where in by_logger:
        series, epoch_totals = [], []
        for attempt, scalars in enumerate(a[where] for a in attempts):
            context = f"{where}, attempt {attempt}"
            points, at_epochs = split_points(scalars, "energy_kwh_total")
            steps = [s for s, _ in points]
            lightnings = [s for s, _ in scalars.get("step_loss", [])]
            if interrupted_last_step and attempt == 0:
                steps = steps[:-1]
            assert len(lightnings) >= 2 and steps == lightnings, context
            co2 = [v for _, v in split_points(scalars, "co2eq_g_total")[0]]
            assert co2 == pytest.approx([v * INTENSITY for _, v in points], rel=1e-5), context
            # (How close to the sensor's 50 W a window under a second comes is test_live's.)
            power = [v for _, v in split_points(scalars, "power_w")[0]]
            assert len(power) == len(points) and all(0 < p < 2 * POWER_W for p in power), (context, power)
            # Each epoch's values come after the step values of its epoch (same step at most).
            epoch_steps = [s for s, _ in scalars.get("energy_kwh", [])]
            merged = sorted([(s, 0, v) for s, v in points] + [(s, 1, v) for s, v in zip(epoch_steps, at_epochs)])
            series += [(attempt, v) for _, _, v in merged]
            epoch_totals += at_epochs
        values = [v for _, v in series]
        assert values == sorted(values), (where, series)  # an attempt goes on from the run's total
        assert values[-1] <= summary_kwh * (1 + REL), where
        train_ends, running = [], 0.0
        for r in records:
            running += r.energy_kwh
            if r.phase == "train" and not r.partial:
                train_ends.append(running)
        assert epoch_totals == pytest.approx(train_ends, rel=REL), where
        logged_total_matches(records, epoch_totals[-1], rel=REL, context=where)
    report_total_matches(output_dir, run_id, summary_kwh)
    return records


@pytest.mark.parametrize("accumulate, resume_from", [(2, "inside"), (1, "epoch end")])
def test_totals_in_every_logger_go_on_across_a_resume(tmp_path, quiet_trackers, accumulate, resume_from):
    """Checkpoints every 3 optimizer steps and at each epoch's end; a crash inside epoch 1; the
    fit resumed in a new Trainer with new loggers from the checkpoint inside epoch 1 (step 6) or
    from the end of epoch 0."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    StepLogging = step_logging(TinyModel)
    output_dir = tmp_path / "energy"

    def fit(name, model, ckpt_path=None):
        loggers = Loggers(L, tmp_path, name, wandb=accumulate == 2 and importlib.util.find_spec("wandb") is not None)
        callback = energy_callback(EnergyCallback, output_dir)
        savers = [L.callbacks.ModelCheckpoint(dirpath=tmp_path / "inside", save_top_k=-1, every_n_train_steps=3,
                                              filename="{step}"),
                  L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ends", save_top_k=-1, filename="{epoch}")]
        trainer = L.Trainer(max_epochs=3, logger=loggers.all, callbacks=[callback, *savers],
                            **trainer_kwargs(enable_checkpointing=True, log_every_n_steps=2,
                                             accumulate_grad_batches=accumulate))
        try:
            trainer.fit(model, data(), loaders()[1], ckpt_path=ckpt_path)
        except Boom:
            pass
        return callback.tracker.run_id, loggers.read()

    run, first = fit("first", StepLogging(fail_at=(1, 7)))
    checkpoint = tmp_path / "inside" / "step=6.ckpt" if resume_from == "inside" else tmp_path / "ends" / "epoch=0.ckpt"
    again, second = fit("again", StepLogging(), ckpt_path=checkpoint)
    assert again == run
    records = check_logged([first, second], run, output_dir)
    assert max(r.attempt for r in records) == 1


@pytest.mark.parametrize("resume_from", ["on_exception", "last"])
def test_ctrl_c_in_a_hook_then_a_fit_from_its_checkpoint_in_a_new_trainer(tmp_path, quiet_trackers, resume_from):
    """Ctrl-C in another callback's ``on_train_batch_end`` inside epoch 1, after ours logged that
    batch's step values and before Lightning's own: Lightning shuts down gracefully (2.5+ then
    exit). The run goes on in a new Trainer from ``OnExceptionCheckpoint``'s checkpoint (inside
    epoch 1) or from ``ckpt_path="last"`` (the end of epoch 0)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    StepLogging = step_logging(TinyModel)
    output_dir = tmp_path / "energy"

    class CtrlC(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (trainer.current_epoch, batch_idx) == (1, 5):
                raise KeyboardInterrupt

    def fit(name, extra=(), ckpt_path=None):
        callback, loggers = energy_callback(EnergyCallback, output_dir), Loggers(L, tmp_path, name)
        savers = [L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True),
                  L.callbacks.OnExceptionCheckpoint(dirpath=tmp_path / "ckpt")]
        trainer = L.Trainer(max_epochs=3, logger=loggers.all, callbacks=[callback, *extra, *savers],
                            **trainer_kwargs(enable_checkpointing=True, log_every_n_steps=2))
        try:
            trainer.fit(StepLogging(), data(), loaders()[1], ckpt_path=ckpt_path)
        except SystemExit:  # Lightning 2.5+, after its graceful shutdown
            pass
        return trainer, callback.tracker.run_id, loggers.read()

    trainer, run, first = fit("first", [CtrlC()])
    assert trainer.interrupted
    ckpt_path = tmp_path / "ckpt" / "on_exception.ckpt" if resume_from == "on_exception" else "last"
    _, again, second = fit("again", ckpt_path=ckpt_path)
    assert again == run
    records = check_logged([first, second], run, output_dir, interrupted_last_step=True)
    assert [(r.attempt, r.epoch, r.partial) for r in records if r.phase == "train"][:3] == [
        (0, 0, False), (0, 1, True), (1, 1, False)]


def before(scalars: dict, step: int) -> dict:
    """The points of every metric logged before ``step``."""
    return {name: [(s, v) for s, v in points if s < step] for name, points in scalars.items()}


def since(scalars: dict, step: int) -> dict:
    return {name: [(s, v) for s, v in points if s >= step] for name, points in scalars.items()}


def test_a_second_fit_on_one_trainer_then_evaluations_log_where_lightning_does(tmp_path, quiet_trackers):
    """Manual optimization stepping two optimizers a batch (two global steps, one logging step),
    fitted twice on one Trainer (a new run the second time, from its own zero) and then validated,
    tested and predicted: each run's values in every logger keep the invariants, and every
    evaluation's values are its records at the one step Lightning logs them all at (predict's
    went to global_step, twice as far)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    output_dir = tmp_path / "energy"
    callback, loggers = energy_callback(EnergyCallback, output_dir), Loggers(L, tmp_path, "twice")
    trainer = L.Trainer(max_epochs=2, logger=loggers.all, callbacks=[callback], limit_val_batches=1,
                        **trainer_kwargs(log_every_n_steps=3))
    model = two_optimizers(TinyModel)()
    trainer.fit(model, data(), loaders()[1])
    first_run, first_end = callback.tracker.run_id, trainer.fit_loop.epoch_loop._batches_that_stepped
    trainer.fit_loop.max_epochs = 4
    trainer.fit(model, data(), loaders()[1])
    second_run = callback.tracker.run_id
    assert second_run != first_run and trainer.global_step == 2 * 40
    (validated,) = trainer.validate(model, loaders()[1], verbose=False)
    (tested,) = trainer.test(model, loaders()[1], verbose=False)
    trainer.predict(model, loaders()[1])
    logged = loggers.read()
    check_logged([{where: before(s, first_end) for where, s in logged.items()}], first_run, output_dir)
    records = check_logged([{where: since(s, first_end) for where, s in logged.items()}], second_run, output_dir)
    last = {phase: [r for r in records if r.phase == phase][-1] for phase in ("validation", "test", "predict")}
    step = trainer.fit_loop.epoch_loop._batches_that_stepped  # where Lightning logged the test's loss
    for where, scalars in logged.items():
        assert scalars["test_loss"] == [(step, pytest.approx(tested["test_loss"]))], where
        for phase, prefix in (("validation", "val_"), ("test", "test_"), ("predict", "predict_")):
            assert scalars[prefix + "energy_kwh"][-1] == (step, pytest.approx(last[phase].energy_kwh, rel=REL)), (where, phase)
    assert validated["val_energy_kwh"] == pytest.approx(last["validation"].energy_kwh, rel=1e-12)
