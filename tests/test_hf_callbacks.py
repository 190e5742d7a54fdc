"""The HF callback as an object: copied or pickled (alone, or with its Trainer), held while its
Trainer is dropped, removed from the Trainer mid-train and added back.

Real Trainers on the tiny BERT of ``hf_tiny``, a scripted constant-power sensor.
"""

from __future__ import annotations

import copy
import gc
import pickle
import time
import weakref

import pytest

transformers = pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.watch import POLL_S  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args,
)

pytestmark = pytest.mark.slow


def make_callback(**kwargs) -> EnergyCallback:
    return EnergyCallback(intensity=400.0, sensors=[scripted_sensor()], **kwargs)


def make_trainer(out, callbacks, **overrides) -> Trainer:
    return Trainer(model=tiny_model(), args=training_args(out, **overrides), train_dataset=TokenDataset(TRAIN_SAMPLES),
                   eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=callbacks)


def assert_a_fresh_copy_of(copied: EnergyCallback, original: EnergyCallback) -> None:
    assert (copied._settings, copied.step_metrics) == (original._settings, original.step_metrics)
    assert copied._trainer is None and not copied._runs  # no Trainer came along (its model, its optimizer)
    assert copied.session is not original.session and not copied.session.running
    assert copied.tracker.run_id != original.tracker.run_id


def test_a_copy_or_pickle_of_the_callback_keeps_its_settings_and_leaves_the_trainer_behind(tmp_path):
    """Regression: once in a Trainer, ``pickle.dumps`` of the callback raised (the wrappers on the
    Trainer were closures) and ``copy.deepcopy`` copied the whole Trainer, model and optimizer."""
    callback = make_callback(step_metrics=False)
    trainer = make_trainer(tmp_path / "out", [callback], num_train_epochs=1)
    for copied in (copy.deepcopy(callback), pickle.loads(pickle.dumps(callback))):
        assert_a_fresh_copy_of(copied, callback)
    trainer.train()
    copied = pickle.loads(pickle.dumps(callback))
    assert_a_fresh_copy_of(copied, callback)
    # The copy measures a run of its own, in its own Trainer.
    other = make_trainer(tmp_path / "copy", [copied], num_train_epochs=1)
    other.train()
    assert [(r.epoch, r.samples) for r in read_records(tmp_path / "copy") if r.phase == "train"] == [(0, TRAIN_SAMPLES)]
    assert copied.tracker.run_id != callback.tracker.run_id


def test_a_copy_taken_mid_train_leaves_the_original_measuring(tmp_path):
    """Regression: another callback copying ours at an epoch end raised ``cannot pickle
    '_thread.lock'`` (the running meter) into train()."""
    callback = make_callback()
    copies = []

    class Copier(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            copies.append(copy.deepcopy(callback))
            copies.append(pickle.loads(pickle.dumps(callback)))

    trainer = make_trainer(tmp_path / "out", [callback, Copier()])
    trainer.train()
    assert len(copies) == 4
    for copied in copies:
        assert_a_fresh_copy_of(copied, callback)
    records = read_records(tmp_path / "out")
    assert {r.run_id for r in records} == {callback.tracker.run_id}
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == [(0, TRAIN_SAMPLES), (1, TRAIN_SAMPLES)]
    assert [r.samples for r in records if r.phase == "validation"] == [EVAL_SAMPLES, EVAL_SAMPLES]
    assert not any(r.partial for r in records) and not callback.session.running


def test_a_trainer_that_pickled_before_the_callback_saw_it_still_pickles_and_trains(tmp_path):
    """Regression: the callback set closures on the Trainer instance under its method names, so a
    Trainer that pickled without it (Ray Tune's search pickles the Trainer) no longer did. Run in a
    fresh interpreter: after any train() in a process, Accelerate's shared state holds weak
    references and no Trainer pickles there, with or without the callback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    script = (
        "import pickle, sys\n"
        f"sys.path[:0] = [{str(tests)!r}, {str(tests.parent)!r}]\n"
        "from transformers import Trainer\n"
        "from greencallbacks.hf import EnergyCallback\n"
        "from hf_tiny import TokenDataset, tiny_model, training_args\n"
        "def trainer(out, callbacks):\n"
        "    return Trainer(model=tiny_model(), args=training_args(out, num_train_epochs=1),\n"
        "                   train_dataset=TokenDataset(30), eval_dataset=TokenDataset(10, seed=1),\n"
        "                   callbacks=callbacks)\n"
        "pickle.dumps(trainer(sys.argv[1] + '/plain', None))\n"
        "restored = pickle.loads(pickle.dumps(trainer(sys.argv[1] + '/out', [EnergyCallback(intensity=400.0)])))\n"
        "restored.train()\n"
        "print('eval_energy_kwh' in restored.evaluate())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
    # The restored Trainer's wrappers count for its own callback (a copy of the one pickled).
    records = read_records(tmp_path / "out")
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == [(0, TRAIN_SAMPLES)]
    assert [r.samples for r in records if r.phase == "validation"] == [EVAL_SAMPLES, EVAL_SAMPLES]


def test_a_deep_copy_of_the_trainer_counts_its_own_batches(tmp_path):
    """Regression: ``copy.deepcopy(trainer)`` kept the original's closures, which counted the copy's
    batches for the original's callback: the copy's records said 0 samples."""
    trainer = make_trainer(tmp_path / "out", [make_callback()], num_train_epochs=1)
    twin = copy.deepcopy(trainer)
    twin.train()
    assert [(r.epoch, r.samples) for r in read_records(tmp_path / "out") if r.phase == "train"] == [(0, TRAIN_SAMPLES)]


def test_the_callback_keeps_no_trainer_alive(tmp_path):
    """A callback kept (a notebook's variable) after its Trainers are dropped held the last one, its
    model and optimizer with it."""
    callback = make_callback()
    trainer = make_trainer(tmp_path / "out", [callback], num_train_epochs=1)
    trainer.train()
    trainer.evaluate()
    gone = weakref.ref(trainer)
    del trainer
    # The watch thread may be inside one poll, holding the frame it watched, for a moment; it
    # keeps nothing while it waits (it kept the last frame until the next watch).
    deadline = time.monotonic() + 30 * POLL_S
    while gc.collect() is not None and gone() is not None and time.monotonic() < deadline:
        time.sleep(POLL_S / 4)
    assert gone() is None


@pytest.mark.parametrize("back_at_step, expected", [
    # 4 steps an epoch; out after step 2. Back at the epoch's last step: it sees that epoch end, short of the
    # batches it missed. Back in the next epoch: the epoch it began ended unseen, cut short (partial) there.
    (4, [(0, False, False), (1, False, True), (2, False, True)]),
    (5, [(0, True, False), (1, False, False), (2, False, True)]),
])
def test_a_callback_removed_and_added_back_mid_train_says_what_it_missed(tmp_path, back_at_step, expected):
    """Regression: removed at step 2 and added back at step 5, one record "epoch 0, 38 samples,
    counted" covered two epochs (the batches run while it was out were not counted, the epoch end
    it missed not seen)."""
    callback = make_callback()

    class Juggler(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                trainer.remove_callback(callback)
            if state.global_step == back_at_step:
                trainer.add_callback(callback)

    trainer = make_trainer(tmp_path / "out", [callback, Juggler()], num_train_epochs=3)
    trainer.train()
    train = [r for r in read_records(tmp_path / "out") if r.phase == "train"]
    assert [(r.epoch, r.partial, r.samples_counted) for r in train] == expected
    assert train[-1].samples == TRAIN_SAMPLES
    assert not callback.session.running


@pytest.mark.parametrize("name", ["_CountingTrainingStep", "_CountingPreparedInputs", "_CountingPredictionStep",
                                  "_ObjectiveWithoutEnergy", "_MeasuredLoop", "_NotingReplacedCallbacks"])
def test_a_trainer_pickled_before_the_package_split_finds_its_wrappers(name):
    """Regression: these classes lived in ``greencallbacks/hf/__init__.py`` until it was split into
    modules; a Trainer pickled then names them there, and unpickling it raised AttributeError."""
    import greencallbacks.hf as package
    from greencallbacks.hf import _callback, _wrappers

    found = pickle.loads(f"cgreencallbacks.hf\n{name}\n.".encode())  # a GLOBAL opcode, as such a pickle holds
    assert found is getattr(_wrappers, name, None) or found is getattr(_callback, name)
    assert found.__module__ != package.__name__  # pickled anew, it names its own module
