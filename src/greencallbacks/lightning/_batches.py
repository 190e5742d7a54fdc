"""How the batches of each loop are counted (``_BatchCounting``): one loader's by what collates it,
several loaders combined in one batch loader by loader, and batches a model's or data module's
hook may remake on their way to the step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

from greencallbacks.samples import count_samples
from greencallbacks.torch_support import loader_collate


class _BatchCounting:
    """Part of ``EnergyCallbackBase``: its methods that plan and count the samples and tokens of
    the batches. No state of its own: they read and write the callback's (see ``EnergyCallbackBase.__init__``)."""

    def _plan_training_batches(self, trainer: Any) -> None:
        """How the training batches are counted. Several training iterables (fit(model, {"a":
        loader_a, "b": loader_b}) or a list, nested too): each batch holds one batch of each (fit
        has no "sequential" mode), counted apart. Read again at each epoch's start, where
        ``reload_dataloaders_every_n_epochs`` has made the epoch's own (a loader added: its part
        was left uncounted)."""
        loaders = trainer.train_dataloader  # public: the iterables given to fit, combined
        self._train_parts = self._parts_of(trainer, loaders)
        self._train_collates = _collates(trainer, loaders)
        self._counter.collate = self._train_collates[0]
        self._counter.loader_batches = self._train_loader_batches = _batches_of(trainer, loaders)

    def _add_evaluated(self, batch: Any, dataloader_idx: int) -> None:
        """Count a validation, test or predict batch by the rule of the loader it came from, or,
        from a CombinedLoader in another mode than "sequential", of each loader apart."""
        if self._eval_parts is not None:
            self._add_combined(batch, self._eval_parts)
        else:
            collates = self._eval_collates
            self._counter.collate = collates[dataloader_idx] if dataloader_idx < len(collates) else None
            self._counter.add(self.tracker, batch)
        self.tracker.heartbeat()  # as at a training step: a long evaluation has no logging steps

    def _plan_evaluation(self, trainer: Any, loaders: Any, stage: str) -> None:
        """How the batches of the evaluation starting are counted. Lightning runs a dict or list of
        evaluation loaders one after the other ("sequential": a batch is one loader's, told by its
        dataloader_idx; predict knows no other mode), unless given a CombinedLoader in another
        mode, whose batches hold one batch of each loader (None where one is exhausted): the mode
        is private (``_mode``, 2.2 to 2.6); unread, each batch is counted whole, by the general rule."""
        self._eval_collates = _collates(trainer, loaders)
        self._eval_parts = self._counter.loader_batches = None
        if stage == "predict":
            return
        try:
            if stage == "test":
                loop = trainer.test_loop
            else:  # fit's own validation loop, or validate()'s
                loop = trainer.validate_loop if trainer.state.fn == "validate" else trainer.fit_loop.epoch_loop.val_loop
            mode = getattr(getattr(loop, "_combined_loader", None), "_mode", "sequential")
        except Exception:  # noqa: BLE001 - a release without these loops: counted whole
            mode = "sequential"
        if mode != "sequential":
            self._eval_parts = self._parts_of(trainer, loaders)
            self._counter.loader_batches = _batches_of(trainer, loaders)

    def _parts_of(self, trainer: Any, loaders: Any) -> Any:
        """For iterables whose batches hold one batch of each (several loaders, combined), the
        collate of each (``_collate_tree``), to count each one's batch apart: as a whole,
        ``{"a": [x, y], "b": [x, y]}`` reads as 2 samples. None, the batch is counted whole: one
        loader, or the user's own counter, given the whole batch. A hook that may remake the
        combined batch on its way (into one tensor) leaves each part to the general rule, where
        the batch still has the loaders' shape (see ``_add_parts``)."""
        if isinstance(loaders, (dict, list, tuple)) and not self._counter.custom_samples:
            self._parts_remade = _remade(trainer)
            return _collate_tree(trainer, loaders)  # each loader's collate None where a hook may remake its batch
        return None

    def _add_combined(self, batch: Any, parts: Any) -> None:
        """A batch of several loaders: samples counted loader by loader (``_add_parts``), tokens by
        the ``token_counter`` on the whole batch, the one the step is given, as a ``sample_counter``
        is. Handed each loader's part only, a counter written for that batch raised on every part
        (``b["a"]`` of ``b["a"]``) and the epoch had no tokens; each part is its fallback, for a
        counter written for one loader's batch (``BatchCounter.count_tokens``)."""
        token_counter = self._counter.token_counter
        if token_counter is None:
            self._add_parts(batch, parts)
            return
        self._counter.token_counter = None
        try:
            self._add_parts(batch, parts)
        finally:
            self._counter.token_counter = token_counter
        self.tracker.add_samples(0, tokens=self._counter.count_tokens(batch, self.tracker.run_id))

    def _add_parts(self, batch: Any, parts: Any) -> None:
        """Count a combined batch loader by loader, each by its own collate, as ``parts`` (nested
        as the iterables are) says. A batch not shaped as they are is counted whole."""
        if isinstance(parts, dict):
            if isinstance(batch, dict) and batch.keys() == parts.keys():
                for key, collate in parts.items():
                    self._add_parts(batch[key], collate)
                return
        elif isinstance(parts, (list, tuple)):
            if isinstance(batch, (list, tuple)) and len(batch) == len(parts):
                if self._parts_remade and type(batch) is not type(parts):
                    # Lightning gives the iterables' own kind, a list for a list: a hook made this
                    # tuple, (x, y) of the loaders' batches concatenated.
                    self._counter.collate = None
                    self._counter.add(self.tracker, batch)
                    return
                if self._parts_remade and not all(part is None or isinstance(part, (list, tuple, dict)) for part in batch):
                    # Remade by a hook, a list of one batch per loader ([x_a, x_b] of bare tensors)
                    # and a batch of fields (two loaders' batches concatenated into (x, y)) look
                    # alike: exact only where both readings agree.
                    self._add_either(batch)
                    return
                # Else each part is a loader's batch of fields (or None, exhausted): a hook that only
                # augments keeps [[x, y], [x, y]], which counted whole read as 2 samples a step.
                for part, collate in zip(batch, parts):
                    self._add_parts(part, collate)
                return
        elif batch is None:  # an iterable already exhausted ("max_size" mode)
            return
        else:
            self._counter.collate = parts
            self._counter.add(self.tracker, batch)
            return
        self._counter.collate = None
        self._counter.add(self.tracker, batch)

    def _add_either(self, batch: list | tuple) -> None:
        """Count a batch that is one loader's batch per item, or fields, by the reading both give; else uncounted."""
        self._counter.collate = None
        whole, tokens = self._counter.count(batch, self.tracker.run_id)
        apart = [count_samples(part) for part in batch if part is not None]
        if whole is not None and None not in apart and whole != sum(apart):
            self._counter._warn("sample_counter", count_samples, batch, None, None, self.tracker.run_id)  # once per run
            whole = None
        self.tracker.add_samples(whole, tokens=tokens)


_BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def _remade(trainer: Any) -> bool:
    """Whether the model or data module overrides a hook that may remake a batch on its way from
    the loader to the step hooks (``on_before_batch_transfer``, ``transfer_batch_to_device``,
    ``on_after_batch_transfer``): what the loaders made is then no guide to what is counted."""
    try:
        owners = [o for o in (trainer.lightning_module, getattr(trainer, "datamodule", None)) if o is not None]
        return any(getattr(getattr(type(owner), hook, None), "__qualname__", f"DataHooks.{hook}") != f"DataHooks.{hook}"
                   for owner in owners for hook in _BATCH_HOOKS)
    except Exception:  # noqa: BLE001 - only a guide
        return True


def _batches_of(trainer: Any, loaders: Any) -> Callable[[Any], list | None] | None:
    """For several loaders (a dict or list of them, nested too) whose batches hold one batch of
    each: ``batch -> [each loader's batch]`` (``_loader_batches``). None for one loader, or where
    the model or data module overrides a hook that may remake a batch on its way (``_remade``):
    a list of the loaders' batches and one of a batch's fields then look alike."""
    if not isinstance(loaders, (dict, list, tuple)) or _remade(trainer):
        return None
    return functools.partial(_loader_batches, loaders=loaders)


def _loader_batches(batch: Any, loaders: Any) -> list | None:
    """Each loader's batch in ``batch``, nested as ``loaders`` are (an exhausted one's None left
    out: it has no tokens); None where ``batch`` is not shaped as they are."""
    if isinstance(loaders, dict):
        if not (isinstance(batch, dict) and batch.keys() == loaders.keys()):
            return None
        pairs = [(batch[key], loaders[key]) for key in loaders]
    elif isinstance(loaders, (list, tuple)):
        if not (isinstance(batch, (list, tuple)) and len(batch) == len(loaders)):
            return None
        pairs = list(zip(batch, loaders))
    else:
        return [] if batch is None else [batch]
    found: list = []
    for part, loader in pairs:
        parts = _loader_batches(part, loader)
        if parts is None:
            return None
        found += parts
    return found


def _collates(trainer: Any, loaders: Any) -> list[str | None]:
    """For each data loader of a stage (the trainer's public ``*_dataloader(s)``: one, or a list or
    dict of them, nested too), in the order of their ``dataloader_idx`` (Lightning's flattening:
    a dict's values in order, a list's items), what collates its batches (``_collate_tree``)."""
    def leaves(node: Any) -> Iterable[str | None]:
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, (list, tuple)):
            for item in node:
                yield from leaves(item)
        else:
            yield node

    return list(leaves(_collate_tree(trainer, loaders))) or [None]


def _collate_tree(trainer: Any, loaders: Any) -> Any:
    """``loaders`` (one, or a dict or list or tuple of them, nested as a CombinedLoader allows; a
    list or tuple kept as its own kind, as the batches keep it) with each loader replaced by what
    makes the batches that reach the hooks (``greencallbacks.samples.count_samples``'
    ``collate``, read by ``loader_collate``: torch's ``default_collate``, whose lists are fields
    and text pairs count exactly; ``collate_fn=list``; no batching, ``batch_size=None``). None
    where the model or data module overrides a hook that may remake the batch on its way (a list
    of per-sample records for a detection model)."""
    remade = _remade(trainer)  # True where it cannot tell

    def tree(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: tree(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            kind = type(node) if type(node) in (list, tuple) else list
            return kind(tree(item) for item in node)
        return None if remade else loader_collate(node)

    try:
        return tree(loaders)
    except Exception:  # noqa: BLE001 - an odd loader: the general rule
        return None

