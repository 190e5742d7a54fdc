"""The core classes' constructors refuse a mistyped keyword as the callbacks do: naming the
nearest valid one (``checks.keywords_checked``, ``checks.unknown_keyword``)."""

import pytest

from greencallbacks.checks import keyword_names, keywords_checked, unknown_keyword


@keywords_checked
class Settings:
    def __init__(self, first=1, /, second=2, *, output_dir=None, run_id=None):
        if not isinstance(second, int):
            raise TypeError("second must be an integer")
        self.values = (first, second, output_dir, run_id)


def test_a_mistyped_keyword_names_the_nearest_valid_one_and_every_valid_one():
    with pytest.raises(TypeError) as refused:
        Settings(run_di="a")
    assert str(refused.value) == ("Settings() got an unexpected keyword argument 'run_di'; did you mean 'run_id'? "
                                  "(valid: output_dir, run_id, second)")
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # not Python's message as well
    with pytest.raises(TypeError, match=r"'colour' \(valid: output_dir, run_id, second\)$"):  # nothing near
        Settings(colour="red")


def test_what_is_no_mistyped_keyword_is_left_as_it_was():
    assert Settings(0, 3, output_dir="d", run_id="r").values == (0, 3, "d", "r")
    with pytest.raises(TypeError, match="^second must be an integer$"):  # the constructor's own
        Settings(second="x")
    with pytest.raises(TypeError, match="positional"):  # Python's, for a positional mistake
        Settings(1, 2, 3)


def test_the_names_stay_readable_through_the_wrapper():
    """``session.keyword_names`` reads a constructor's code: through the wrapper it would read
    ``(*args, **kwargs)``; ``checks.keyword_names`` reads the constructor's own."""
    assert keyword_names(Settings.__init__) == ("second", "output_dir", "run_id")
    import inspect

    assert list(inspect.signature(Settings).parameters) == ["first", "second", "output_dir", "run_id"]


def test_a_constructor_taking_any_keyword_is_left_alone():
    class Any:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    assert keywords_checked(Any).__init__ is Any.__init__


def test_the_message_is_the_callbacks_own():
    """One message for the callbacks' unknown keywords and the core's (session.reject_unknown_arguments)."""
    from greencallbacks.session import reject_unknown_arguments

    with pytest.raises(TypeError) as callbacks:
        reject_unknown_arguments("EnergyCallback", {"contry": "FR"}, ["prefix"])
    valid = str(callbacks.value).split("(valid: ")[1].rstrip(")").split(", ")
    assert str(callbacks.value) == str(unknown_keyword("EnergyCallback", "contry", valid))


@pytest.mark.parametrize("make, owner, typo, meant", [
    ("greencallbacks.tracker:Tracker", "Tracker", "ouput_dir", "output_dir"),
    ("greencallbacks.meter:Meter", "Meter", "sensor", "sensors"),
    ("greencallbacks.session:EnergySession", "EnergySession", "contry", "country"),
    ("greencallbacks.budget:Budget", "Budget", "kwhs", "kwh"),
    ("greencallbacks.carbon_aware:CarbonAwarePause", "CarbonAwarePause", "max_delay", "max_delay_s"),
    ("greencallbacks.carbon:Carbon", "Carbon", "zones", "zone"),
])
def test_every_core_constructor_names_the_keyword_meant(make, owner, typo, meant):
    """The core classes gave Python's `X.__init__() got an unexpected keyword argument`, naming
    nothing valid, where the callbacks said what was meant."""
    import importlib

    module, name = make.split(":")
    with pytest.raises(TypeError, match=rf"^{owner}\(\) got an unexpected keyword argument '{typo}'; did you mean "
                                        rf"'{meant}'\? \(valid: .*\b{meant}\b"):
        getattr(importlib.import_module(module), name)(**{typo: None})
