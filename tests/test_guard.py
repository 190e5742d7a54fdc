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
