"""One framework's notebook session, cell by cell, in a real IPython shell (``test_notebook_shell.py``).

    python tests/notebook_shell_runner.py <lightning|keras|hf|ddp_notebook> <out_dir>

The cells run through ``InteractiveShell.run_cell`` as a notebook runs them: a failed cell's
exception stays in ``sys.last_traceback``, IPython's traceback machinery and its result, the last
expression of a cell stays in ``Out``, and ``%reset -f`` empties the namespace. A process of its
own: the shell installs its namespace as ``__main__`` and Keras fixes its backend at first import.
Between cells, the checks run here (outside the shell), waiting boundedly, never sleeping for
seconds: the failed call's phase partial and its run's summary ``failed`` (in Keras and HF written
by the watch thread, without an exception hook), no meter thread left, records summing to the
summary, one new run per training call. The outcome ("ok" or the failure) goes to
``<out_dir>/results.json``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

FRAMEWORK, OUT = sys.argv[1], Path(sys.argv[2])
if FRAMEWORK == "ddp_notebook":
    sys.ps1 = ">>> "  # an interactive session, where Lightning allows ddp_notebook (read as it is imported)
if FRAMEWORK == "keras":
    os.environ["KERAS_BACKEND"] = "torch"  # before anything imports Keras
os.environ["IPYTHONDIR"] = str(OUT / "ipython")  # no profile or history in the user's home
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for flow_invariants and the tiny models

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

from flow_invariants import check_run  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.summaries import kept_summary_path  # noqa: E402
from greencallbacks.tracker import SUMMARY_FILE  # noqa: E402

POWER_W = 50.0
WAIT_S = 5.0  # the write-up is due within ~0.2 s; this only bounds a failing wait

config = Config()
config.HistoryManager.enabled = False
shell = InteractiveShell.instance(config=config)
shell.colors = "nocolor"
ns = shell.user_ns
ns["OUT"] = str(OUT)


def cell(code: str, error: type[BaseException] | tuple | None = None):
    result = shell.run_cell(code, store_history=True)  # as a notebook: numbered, kept in Out
    raised = result.error_in_exec or result.error_before_exec
    if error is None:
        assert raised is None, f"cell raised {raised!r}:\n{code}"
    else:
        assert isinstance(raised, error), f"cell raised {raised!r}, not {error}:\n{code}"
    return result


def meter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "greencallbacks-meter" and t.is_alive()]


def summary(directory: Path) -> dict:
    path = directory / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.01)


def failed_write_up(directory: Path, run_id: str, context: str) -> list:
    """The run a failed cell left: written up with nobody calling the callback again."""
    assert sys.last_traceback is not None, "IPython keeps the exception"  # what a notebook does
    wait_until(lambda: summary(directory).get("run_id") == run_id and not meter_threads(),
               f"the failed run {run_id} written up and its meter thread stopped [{context}]")
    assert summary(directory)["ended"] == "failed", context
    records = check_run(run_id, [directory], power_w=POWER_W, context=context)
    assert any(r.partial and r.phase == "train" for r in records), [(r.phase, r.partial) for r in records]
    return records


def finished(directory: Path, run_id: str, context: str) -> list:
    assert not meter_threads(), context
    assert summary(directory)["run_id"] == run_id and summary(directory)["ended"] == "finished", context
    return check_run(run_id, [directory], power_w=POWER_W, context=context)


def runs_in(directory: Path) -> list[str]:
    return list(dict.fromkeys(r.run_id for r in read_records(directory)))


# The cells of each framework: (setup, a training call that fails mid-epoch, the same call again,
# an evaluation after it, the last expression kept in Out, two objects of a second session).
SETUP = {
    "ddp_notebook": "",
    "lightning": """
import time, lightning as L
from lightning_models import flavour, loaders, trainer_kwargs, Boom
from tests.fakes.scripted import ScriptedSensor
_L, EnergyCallback, TinyModel = flavour("lightning.pytorch")  # `_` stays IPython's
def sensor():
    s = ScriptedSensor("gpu", time.monotonic, 50.0); s.poll_interval_s = 0.05  # sampled: a meter thread
    return s
train, val = loaders()
def new(name, fail_at=None):
    callback = EnergyCallback(sensors=[sensor()], intensity=300.0, output_dir=OUT + "/" + name)
    return callback, TinyModel(fail_at), L.Trainer(max_epochs=3, default_root_dir=OUT + "/logs-" + name,
                                                   callbacks=[callback], **trainer_kwargs())
cb, model, trainer = new("a", fail_at=(1, 2))
""",
    "keras": """
import time, numpy as np, keras
from greencallbacks.keras import EnergyCallback
from tests.fakes.scripted import ScriptedSensor
def sensor():
    s = ScriptedSensor("gpu", time.monotonic, 50.0); s.poll_interval_s = 0.05
    return s
rng = np.random.default_rng(0)
X, Y = rng.random((100, 8), dtype=np.float32), rng.random((100, 1), dtype=np.float32)
class CtrlC(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__(); self.at, self.epoch = (epoch, batch), None
    def on_epoch_begin(self, epoch, logs=None): self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.at = None
            raise KeyboardInterrupt
def new(name):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return EnergyCallback(sensors=[sensor()], intensity=300.0, output_dir=OUT + "/" + name), model, None
cb, model, trainer = new("a")
stop = CtrlC(1, 1)
""",
    "hf": """
import time
from transformers import Trainer, TrainerCallback
from greencallbacks.hf import EnergyCallback
from tests.fakes.scripted import ScriptedSensor
from tests.hf_tiny import TokenDataset, tiny_model, training_args
def sensor():
    s = ScriptedSensor("gpu", time.monotonic, 50.0); s.poll_interval_s = 0.05
    return s
class CtrlC(TrainerCallback):
    def __init__(self, step): self.step = step
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.step = None
            raise KeyboardInterrupt
def new(name, extra=()):
    callback = EnergyCallback(sensors=[sensor()], intensity=300.0)
    trainer = Trainer(model=tiny_model(), args=training_args(OUT + "/" + name), train_dataset=TokenDataset(30),
                      eval_dataset=TokenDataset(10, seed=1), callbacks=[callback, *extra])
    return callback, trainer.model, trainer
cb, model, trainer = new("a", [CtrlC(5)])  # 4 steps an epoch: inside epoch 1
""",
}[FRAMEWORK]

TRAIN = {  # one training call of `trainer` / `model` with `cb`, from the start
    "lightning": "trainer.fit(model, train, val)",
    "keras": "model.fit(X, Y, batch_size=32, epochs=3, verbose=0, validation_split=0.2, callbacks=[cb, stop])",
    "hf": "trainer.train()",
}.get(FRAMEWORK, "")
FAILS_WITH = {"lightning": Exception, "keras": KeyboardInterrupt, "hf": KeyboardInterrupt}.get(FRAMEWORK)
EVALUATE = {
    "lightning": "trainer.validate(model, val); trainer.predict(model, val)",
    "keras": "model.evaluate(X, Y, verbose=0, callbacks=[cb]); model.predict(X, verbose=0, callbacks=[cb])",
    "hf": "trainer.evaluate(); trainer.predict(TokenDataset(12, seed=2)).metrics",
}.get(FRAMEWORK, "")
LATER_FIT = {  # `t` / `m` with callback `c`, trained a second time in later cells: a new run each
    "lightning": "{t}.fit_loop.max_epochs += 1; {t}.fit({m}, train, val)",
    "keras": "{m}.fit(X, Y, batch_size=32, epochs=2, verbose=0, callbacks=[{c}])",
    "hf": "{t}.args.num_train_epochs += 1; {t}.train()",
}.get(FRAMEWORK, "")


def session() -> None:
    a = OUT / "a"
    cell(SETUP)
    cell(TRAIN, error=FAILS_WITH)  # cell 2: fails inside epoch 1
    crashed = ns["cb"].tracker.run_id
    records = failed_write_up(a, crashed, "the failed fit")
    cut_short = [r.epoch for r in records if r.phase == "train" and r.partial]
    assert cut_short == [1], [(r.phase, r.epoch, r.partial) for r in records]

    if FRAMEWORK == "lightning":
        cell("model.fail_at = None")
    cell(TRAIN)  # cell 3: the same call on the same objects, its failure behind it: a new run
    again = ns["cb"].tracker.run_id
    assert again != crashed and runs_in(a) == [crashed, again], (crashed, again, runs_in(a))
    trained = finished(a, again, "the same fit again")
    check_run(crashed, [a], power_w=POWER_W, context="the failed run, untouched")
    kept = json.loads(kept_summary_path(a / SUMMARY_FILE, crashed).read_text())  # its summary kept aside
    assert kept["run_id"] == crashed and kept["ended"] == "failed", kept
    crashed_j = sum(r.energy_j for r in read_records(a) if r.run_id == crashed)
    assert abs(kept["energy_kwh"] * 3.6e6 - crashed_j) <= 1e-9 * crashed_j, (kept["energy_kwh"] * 3.6e6, crashed_j)

    cell(EVALUATE)  # cell 4: continues the run that trained
    assert ns["cb"].tracker.run_id == again and runs_in(a) == [crashed, again]
    evaluated = finished(a, again, "evaluation after it")
    assert evaluated[: len(trained)] == trained, "the evaluation rewrote records of the training"
    assert {r.phase for r in evaluated[len(trained):]} >= {"predict"}, [r.phase for r in evaluated]

    kept = "trainer" if FRAMEWORK != "keras" else "model"
    result = cell(kept)  # the last expression: kept in Out and _
    assert result.result is ns[kept] and ns["_"] is ns[kept] and any(v is ns[kept] for v in ns["Out"].values())

    cell("%reset -f")
    assert "cb" not in ns
    cell(f"OUT = {str(OUT)!r}")
    cell(SETUP)  # new objects (those of "a" stay unused)
    cell('c1, m1, t1 = new("one"); c2, m2, t2 = new("two")')
    interleaved = [("c1", "m1", "t1"), ("c2", "m2", "t2"), ("c1", "m1", "t1"), ("c2", "m2", "t2")]
    seen: dict[str, list[str]] = {"one": [], "two": []}
    for c, m, t in interleaved:
        name = "one" if c == "c1" else "two"
        code = (TRAIN.replace("trainer", t).replace("model", m).replace("callbacks=[cb, stop]", f"callbacks=[{c}]")
                if not seen[name] else LATER_FIT.format(c=c, m=m, t=t))
        cell(code)
        run_id = ns[c].tracker.run_id
        assert run_id not in seen[name], f"{code}: continued {run_id}, not a new run"
        seen[name].append(run_id)
        assert runs_in(OUT / name) == seen[name], (runs_in(OUT / name), seen[name])
        finished(OUT / name, run_id, f"interleaved {code}")
    assert not set(seen["one"]) & set(seen["two"])


DDP_SETUP = """
import time, lightning as L
from lightning_models import flavour, loaders, trainer_kwargs
from tests.fakes.scripted import ScriptedSensor
_L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
train, val = loaders()
cb = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0, output_dir=OUT + "/a")
model = TinyModel(fail_at=(1, 1))
trainer = L.Trainer(max_epochs=2, callbacks=[cb], default_root_dir=OUT,
                    **{**trainer_kwargs(), "devices": 2, "strategy": "ddp_notebook"})
"""


def ddp_notebook_session() -> None:
    """Lightning's notebook strategy forks the ranks of every call from the notebook's process,
    whose callback never measures. A fit that failed, the same fit again, a validate: three runs
    (the ranks' run is not known to the notebook, so the validate cannot continue the fit's), each
    its own records. Before: all three took the id drawn in the notebook, numbering from 0 again."""
    a = OUT / "a"
    cell(DDP_SETUP)
    cell("trainer.fit(model, train, val)", error=Exception)  # both ranks fail in epoch 1
    wait_until(lambda: summary(a).get("ended") == "failed", "the failed fit written up")
    crashed = summary(a)["run_id"]
    cell("model.fail_at = None")
    cell("trainer.fit(model, train, val)")
    again = summary(a)["run_id"]
    assert again != crashed and runs_in(a) == [crashed, again], (crashed, again, runs_in(a))
    finished(a, again, "ddp_notebook fit again")
    cell("trainer.validate(model, val)")
    validated = summary(a)["run_id"]
    assert runs_in(a) == [crashed, again, validated], runs_in(a)
    finished(a, validated, "ddp_notebook validate")
    check_run(again, [a], power_w=POWER_W, context="the fit, after the validate")


def main() -> None:
    results = {}
    try:
        ddp_notebook_session() if FRAMEWORK == "ddp_notebook" else session()
        results[FRAMEWORK] = "ok"
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
        results[FRAMEWORK] = traceback.format_exc()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
