"""Which entry of HF's ``TrainerState.stateful_callbacks`` is an EnergyCallback's own.

The Trainer saves every ``ExportableState`` callback's ``state()`` in ``trainer_state.json`` under
its class name: one dict for a single callback of a class, a list for several. At each checkpoint
``_save_checkpoint`` overwrites the dict but *appends* every such callback's state to the list, in
handler order, so the latest checkpoint's entries come last (transformers 4.47 to 5.x alike). On
resume the Trainer loads that dict or list back (and ``restore_callback_states_from_checkpoint``
rebuilds callbacks from the list's first entries, which the adapter undoes).
"""

from __future__ import annotations

import json
from typing import Any

from transformers.trainer_callback import ExportableState

from greencallbacks.meter import warn
from greencallbacks.session import warn_resumed_with_other_settings


def saved_alike(trainer, callback) -> list:
    """The callbacks whose states HF saves under this one's class name, in the order it saves them."""
    name = type(callback).__name__
    alike = [cb for cb in (trainer.callback_handler.callbacks if trainer is not None else [])
             if isinstance(cb, ExportableState) and type(cb).__name__ == name]
    return alike if callback in alike else [callback]


def saved_entry(callback, alike: list, saved, resuming: bool) -> dict | None:
    """This callback's entry in ``state.stateful_callbacks[<class name>]`` (``saved``), or None.

    Each entry carries the settings (``args``) it was saved with: a callback takes the latest
    entry with its own settings (callbacks with the same settings: the latest ones, in handler
    order). A single callback whose settings changed since (a corrected grid) takes a single
    entry, as before; one of several takes the entries' one run that no other callback claims
    (``_only_orphan``); ``alike``: the callbacks saved under the class name (``saved_alike``).
    """
    entries = [e for e in (saved if isinstance(saved, list) else [saved]) if isinstance(e, dict)]
    settings = through_json(callback._settings)
    mine = _entry_with_settings(callback, alike, entries)
    if mine is not None or any(through_json(e.get("args")) == settings for e in entries):
        return mine
    orphan = saved if len(alike) == 1 and isinstance(saved, dict) else _only_orphan(callback, alike, entries)
    if orphan is not None:
        given = through_json(orphan.get("args"))
        if resuming and isinstance(given, dict):
            warn_resumed_with_other_settings(f"{type(callback).__name__}{given}", given, settings, str(callback._settings))
        return orphan
    if resuming and entries:
        warn(f"greencallbacks: the checkpoint holds {len(entries)} {type(callback).__name__} state(s), none saved with "
             f"this callback's settings ({callback._settings}); this training is measured as a new run.")
    return None


def _entry_with_settings(callback, alike: list, entries: list) -> dict | None:
    """The latest entry saved with ``callback``'s settings (several callbacks with the same
    settings: the latest ones, in handler order), or None."""
    settings = through_json(callback._settings)
    matching = [e for e in entries if through_json(e.get("args")) == settings]
    same = [cb for cb in alike if getattr(cb, "_settings", None) == callback._settings]
    index = max(len(matching) - len(same), 0) + same.index(callback)
    return matching[index] if index < len(matching) else None


def _only_orphan(callback, alike: list, entries: list) -> dict | None:
    """The entry of the one run no callback here claims, for the one callback here whose settings
    match no entry (a grid corrected on one of two callbacks), as the Lightning adapter takes the
    one state no callback claims; None where that is not plain: another callback changed too, or
    the entries left are of several runs. The list holds every checkpoint's entries, the latest
    last: the latest of that run's (an entry of a claimed run, saved before its callback's settings
    changed at an earlier resume, is no second run)."""
    changed = [cb for cb in alike if not any(through_json(e.get("args")) == through_json(cb._settings) for e in entries)]
    if changed != [callback]:
        return None
    claimed = [_entry_with_settings(cb, alike, entries) for cb in alike if cb is not callback]
    claimed_runs = {_run_id(e) for e in claimed if e is not None}
    known = [through_json(cb._settings) for cb in alike]
    left = [e for e in entries if through_json(e.get("args")) not in known and _run_id(e) not in claimed_runs]
    runs = {_run_id(e) for e in left}
    return left[-1] if len(runs) == 1 and None not in runs else None


def _run_id(entry: dict):
    state = (entry.get("attributes") or {}).get("energy_state")
    return state.get("run_id") if isinstance(state, dict) else None


def complete_saved_entries(stateful: dict, name: str, alike: list) -> None:
    """Give ``_save_checkpoint`` the entry it indexes: a checkpoint written without the callback
    has none (KeyError), and several callbacks of one class need the list form (a dict is
    overwritten by each in turn, keeping only the last one's state)."""
    entry = stateful.get(name)
    if len(alike) > 1 and not isinstance(entry, list):
        stateful[name] = [cb.state() for cb in alike]
    elif entry is None:
        stateful[name] = alike[0].state()


def through_json(value: Any) -> Any:
    """``value`` as read back from ``trainer_state.json`` (tuples become lists)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value
