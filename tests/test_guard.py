import pytest

from greencallbacks.guard import never_raises
from greencallbacks.meter import EnergyWarning


class Hooks:
    def __init__(self):
        self.calls = 0

    @never_raises
    def on_epoch_end(self, value):
        self.calls += 1
        if value < 0:
            raise RuntimeError("sensor exploded")
        return value * 2


def test_a_failing_hook_warns_once_per_callback_and_returns_none():
    hooks = Hooks()
    assert hooks.on_epoch_end(2) == 4
    with pytest.warns(EnergyWarning, match=r"Hooks.on_epoch_end failed.*sensor exploded.*training continues") as caught:
        assert hooks.on_epoch_end(-1) is None
        assert hooks.on_epoch_end(-1) is None
    assert len(caught) == 1 and hooks.calls == 3
    with pytest.warns(EnergyWarning):  # another callback object warns on its own
        Hooks().on_epoch_end(-1)


def test_keyboard_interrupt_is_not_swallowed():
    class Interrupted:
        @never_raises
        def hook(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Interrupted().hook()


def test_warnings_made_errors_stop_no_training_and_lose_no_record(tmp_path, capsys):
    """python -W error, or pytest's filterwarnings = error: the "cpu, ram energy is estimated"
    notice raised inside the run's start, so the run never started, and the guard's own warning
    raised again out of the hook: the fit failed at setup with no records. Said on stderr now."""
    pytest.importorskip("lightning")
    import warnings

    from greencallbacks.records import read_records
    from tests.lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyWarning)
        trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[EnergyCallback(output_dir=tmp_path, intensity=100.0)],
                            **trainer_kwargs())
        trainer.fit(TinyModel(), *loaders())
    train = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert [r.epoch for r in train] == [0, 1] and all(r.samples == 32 for r in train)
    assert "(EnergyWarning, shown here: warnings are errors in this process)" in capsys.readouterr().err
