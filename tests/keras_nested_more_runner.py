"""Calls inside calls that the other tests of them (``keras_nested_depth_runner.py``) do not make, on
one backend, in a process of its own (``test_keras_nested_more.py``):

    python tests/keras_nested_more_runner.py <backend> <out_dir> <scenarios, comma-separated>

A model whose ``evaluate`` and ``predict`` overrides take ``callbacks`` and call ``super()``: in each
of the first four scenarios a user callback makes a predict of another model inside a call of that model (a
standalone evaluate or predict, the fit's validation, an evaluate after a training batch), given
the EnergyCallback; the predict raises at its second batch and the callback catches it. On a fake
clock that only batches advance, one second each at 50 W: the failed predict holds its 2 s and 20
rows, as partial, and the call it was made in all its own seconds and rows. And a fit that such a
call's exception ends, written up by the watch before the callback's next call.
"""

from __future__ import annotations

import gc
import weakref

from keras_runner_common import X, XV, Y, YV, run_scenarios  # first: it picks the backend

import keras  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks import watch  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

KWH_PER_S = 50.0 / 3.6e6
SMALL = 10  # every test and predict loop's batch size: 3 batches of 30 rows


class Overriding(keras.Sequential):
    def evaluate(self, x=None, y=None, callbacks=None, **kwargs):
        return super().evaluate(x, y, callbacks=callbacks, **kwargs)

    def predict(self, x, callbacks=None, **kwargs):
        return super().predict(x, callbacks=callbacks, **kwargs)


def compiled(model: keras.Sequential) -> keras.Sequential:
    model.compile(optimizer="sgd", loss="mse")
    return model


class Run:
    def __init__(self, out):
        self.clock, self.dir = FakeClock(), out / "energy"
        self.energy = EnergyCallback(sensors=[ScriptedSensor("gpu", self.clock, 50.0)], intensity=300.0,
                                     output_dir=self.dir)
        self.model = compiled(Overriding([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)]))
        self.other = compiled(keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)]))
        run = self

        class Tick(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                run.clock.advance(1.0)

            on_test_batch_begin = on_predict_batch_begin = on_train_batch_begin

        class Boom(keras.callbacks.Callback):
            def on_predict_batch_end(self, batch, logs=None):
                if batch == 1:
                    raise ValueError("boom")

        self.tick, self.boom = Tick(), Boom()

    def failing_predict_at(self, hook: str) -> keras.callbacks.Callback:
        """A callback whose ``hook``, at the first batch, makes the other model's failing predict and catches it."""
        run = self

        def at_batch(self, batch, logs=None):
            if batch == 0:
                try:
                    run.other.predict(XV, batch_size=SMALL, verbose=0, callbacks=[run.energy, run.tick, run.boom])
                except ValueError:
                    pass

        return type("User", (keras.callbacks.Callback,), {hook: at_batch})()

    def records(self) -> list[tuple]:
        assert not meter_threads() and self.energy._phases == []
        return [(r.phase, r.epoch, round(r.energy_kwh / KWH_PER_S, 6), r.samples if r.samples_counted else None,
                 r.partial) for r in check_run(self.energy.tracker.run_id, [self.dir]) if r.phase != "other"]


FAILED = ("predict", None, 2.0, 20, True)


def in_evaluate(out):
    run = Run(out)
    run.model.evaluate(XV, YV, batch_size=SMALL, verbose=0,
                       callbacks=[run.energy, run.tick, run.failing_predict_at("on_test_batch_end")])
    got = run.records()
    assert got == [FAILED, ("test", None, 3.0, 30, False)], got


def in_predict(out):
    run = Run(out)
    run.model.predict(XV, batch_size=SMALL, verbose=0,
                      callbacks=[run.energy, run.tick, run.failing_predict_at("on_predict_batch_end")])
    got = run.records()
    assert got == [FAILED, ("predict", None, 3.0, 30, False)], got


def in_validation(out):
    run = Run(out)
    run.model.fit(X, Y, batch_size=32, epochs=1, validation_data=(XV, YV), validation_batch_size=SMALL, verbose=0,
                  callbacks=[run.energy, run.tick, run.failing_predict_at("on_test_batch_end")])
    got = run.records()
    assert got == [FAILED, ("validation", 0, 3.0, 30, False), ("train", 0, 4.0, 100, False)], got


def in_evaluate_inside_the_fit(out):
    run = Run(out)
    inner = run.failing_predict_at("on_test_batch_end")

    class User(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                run.model.evaluate(XV, YV, batch_size=SMALL, verbose=0, callbacks=[run.energy, run.tick, inner])

    run.model.fit(X, Y, batch_size=32, epochs=1, verbose=0, callbacks=[run.energy, run.tick, User()])
    got = run.records()
    assert got == [FAILED, ("test", None, 3.0, 30, False), ("train", 0, 4.0, 100, False)], got


def failed_fit_written_up_by_the_watch(out):
    """The fit's predict inside an EMA copy's evaluate raises out of the fit; the watch writes the fit
    up before the next evaluate. Failed before the fix: the loop states the calls had put aside stayed
    with the callback for good, holding the EMA copy the user let go."""
    run = Run(out)
    ema = compiled(keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)]))

    class Inner(keras.callbacks.Callback):
        def on_test_batch_end(self, batch, logs=None):
            if batch == 0:  # its exception not caught
                run.model.predict(XV, batch_size=SMALL, verbose=0, callbacks=[run.energy, run.tick, run.boom])

    inner = Inner()

    class User(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                ema.evaluate(XV, YV, batch_size=SMALL, verbose=0, callbacks=[run.energy, run.tick, inner])  # noqa: F821 (deleted after the fit)

    try:
        run.model.fit(X, Y, batch_size=32, epochs=1, verbose=0, callbacks=[run.energy, run.tick, User()])
    except ValueError:
        pass
    watch.settle()
    assert not run.energy._call.active  # written up by the watch, not by the callback's next call
    freed = weakref.ref(ema)
    del ema, inner, Inner, User
    run.model.evaluate(XV, YV, batch_size=SMALL, verbose=0, callbacks=[run.energy, run.tick])
    gc.collect()
    assert run.energy._outside == [] and freed() is None, (len(run.energy._outside), freed())
    got = run.records()
    assert got[-1] == ("test", None, 3.0, 30, False), got


if __name__ == "__main__":
    run_scenarios(globals())
