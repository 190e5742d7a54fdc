"""How many samples a batch holds: one rule for every adapter, and one warning when there is no answer.

``count_samples(batch)`` returns the number of samples, or ``None`` when the batch does not say
(never a silent 0). It reads, in this order:

* a tensor or array (torch, NumPy, TensorFlow, JAX, pandas): its leading dimension; a nested or
  jagged tensor (``torch.nested``): its number of components; a 0-d tensor has no batch
  dimension and is skipped, as numbers are (``[loss_weight, x, y]`` counts ``x``);
* an object exposing ``num_graphs`` (PyTorch Geometric's ``Batch``), else ``batch_size`` (DGL
  graphs, TensorDict); a graph (``edge_index`` or ``ptr``) without them: ``ptr``'s length less
  one, else its ``batch`` vector's largest index plus one on the CPU, else uncounted (never its
  ``len()``, an attribute count); else ``__len__``;
* a model's named input (``pixel_values``, ``input_values``, ...) given as a list of arrays or
  tensors (HF processors with ``return_tensors=None``): its length, where no other field disagrees;
* the fields of a batch: a tuple or list (``(x, y)``), a mapping (dicts, HF ``BatchEncoding``
  from a data collator), a dataclass, a named tuple; nested to any depth, breadth first, the
  shallowest depth that gives a count read whole (counts there that differ: uncounted), so that
  no order of a dict's keys decides;
* fields that disagree on their leading dimension (packed tokens beside per-sequence lengths,
  graph nodes beside graph labels, a sequence-first tensor beside its labels, labels flattened to
  (B * T,)), side by side or at any depths of the batch's mappings, dataclasses and named tuples
  (where a field lies says nothing of its rows: ``{"inputs": {"x": (B, T, F)}, "targets": {"y":
  (B * T,)}}`` reads as ``{"x": ..., "y": ...}``), a list of texts or numbers counting as its
  length here (3 names beside a batch of 8,
  lengths as a Python list beside packed steps): a model's named input of 2 dimensions or more
  (``input_ids``, ``pixel_values`` of 3 or more: of 2, Qwen-VL's rows of patches, TRL's
  ``completion_ids``, ...) when there is one, else images or video (4 dimensions or
  more: a detection batch's images beside all its boxes), else uncounted, with the warning; never
  the first field's by chance. Per-token ``labels`` whose rows differ from the named input's
  (``input_ids`` packed (1, tokens) beside labels (B, T)) leave the batch uncounted, as do
  named inputs of one name that disagree (queries beside their documents). A (1,) tensor beside
  tensors of more rows is such a field too (a per-batch field, or a batch of one?), and beside a
  list of records (a per-batch weight beside n samples' targets, or one sample's id beside a
  record per object it shows) the batch is uncounted;
* torch's ``PackedSequence``: its number of sequences;
* a list or tuple whose items are samples rather than fields: its length. Items are samples when
  they are strings or numbers (labels, texts); inside a batch, records (dicts, dataclasses,
  tuples: detection targets, where no other field gives another count, as per-input batches
  beside their labels do; tuples or lists of texts of one length other than the list's are a
  sample's texts or ``default_collate``'s texts by position, a fixed-length list of texts per
  sample giving one tuple of B texts per position: counted only where the rest of the batch says
  which), 0-d tensors where nothing else gives a certain count (the labels of a zip collate,
  ``tuple(zip(*b))``, over a ``TensorDataset``), and tensors of different leading
  dimensions (sequences of different lengths) unless the rest of the batch gives another count
  (then they may be fields: an EmbeddingBag's ``((tokens, offsets), labels)``, uncounted with the
  warning); at the top, Python lists of integers (token ids before padding) or objects of one
  class that are no tensors, records of one shape (dicts with the same keys, one dataclass type,
  or a *list* of equal-length tuples of one class: what ``collate_fn=list`` gives; named tuples of
  different classes are fields), a single record too
  (``[{...}]``, ``[(x, y)]``: a batch of one, which ``default_collate`` never gives as fields: it
  returns a dict sample's fields as a dict and a tuple sample's as a list), or tensors of one kind
  that differ only in length (variable-length sequences). A top-level *tuple* of tensors,
  ``(x, y)``, is always fields, as is the tuple ``tuple(zip(*samples))`` gives. (Two
  ``default_collate`` batches read as samples here: of samples that are 1-tuples of dicts,
  ``[{"x": X}]``, one; of samples made only of strings, a list of tuples of strings, one per
  field. Where the DataLoader says it collates by default, :func:`count_collated` counts both
  exactly: the Lightning callback uses it.)
* a mapping whose leading dimension is 1 that is a padding-free collator's packed row
  (transformers' ``DataCollatorWithFlattening``, TRL's ``padding_free``: ``input_ids`` and
  ``position_ids`` both of shape (1, tokens), the positions starting again at each sequence): its
  sequences. ``cu_seq_lens_q`` (FlashAttention's offsets, ``return_flash_attn_kwargs=True``) gives
  them by its shape; else the positions equal to the row's first one are counted (within the
  ``attention_mask``, if any) when the row is on the CPU. On a GPU that count would read the
  device back, a synchronisation on every step: such a batch is uncounted, with the warning
  (``sample_counter=``, or a collator returning ``cu_seq_lens_q``). Padding appended to the row
  without an attention mask (TRL's ``pad_to_multiple_of``) restarts the positions at every pad
  token, each one a sequence in ``cu_seq_lens_q`` too: given the collator's ``pad_token_id``,
  that trailing run is left out (so a last sequence of one pad token alone would be), on the CPU
  only, as it reads the tokens; without it, each pad token counts as a sequence. Only
  where the collator is unknown (``collate`` None) or is padding-free: a batch of one row from a
  collator known to pack nothing (a data set of pre-packed rows) is one sample, as its rows are
  in a batch of two.

A list of per-sample tensors (``collate_fn=list``, or a collate returning its samples as they
are, ``lambda b: b``) is told from ``[x, y]`` only when their lengths differ: a batch of one
sample, or of equal shapes (4 images of (3, 32, 32) count 3), reads as fields. Where the adapter
sees the DataLoader (Lightning) and its ``collate_fn`` is ``list``, ``collate="list"`` says so
and counts the list's items; else such batches take ``sample_counter=len``; a nested tensor
(``torch.nested``) is exact.

A list of tensors inside a batch that agree on their leading dimension but not on their shapes
is ambiguous: per-input fields (``((x_a, x_b), y)``, ``{"inputs": [x_a, x_b], ...}``: the
leading dimension) or per-sample items (images of different sizes, channels first: the list's
length). The rest of the batch says which (``y``, or a detection batch's targets): a certain
count elsewhere that neither reading gives (unless it is a model's named input, ``input_ids``
beside a list of a sample's several images), or none at all where the two readings differ,
leaves the batch uncounted, with the warning. A list of same-shaped tensors inside a batch is
ambiguous too (collated fields, or same-sized samples such as images): where no other field of
the batch gives a certain count, only a count that every such list allows (its leading
dimension or its length) is exact, else the batch is uncounted, with the warning: a zip
collate of samples without labels, ``((image, ..., image),)``, is (its channels, 3, counted).
A list of one tensor inside a batch reads as one field (``((x,), y)``: its leading dimension)
where no other reading contradicts it, except in the shape ``tuple(zip(*samples))`` gives (a
tuple of tuples of one length): a zip collate's batch of one sample.
A batch whose leading dimension is not the sample dimension (a sequence-first tensor) needs
``sample_counter=``: alone, its first dimension is taken.

A DataLoader with its automatic batching off (``batch_size=None``) hands on each item of its data
set as it is, converted to tensors but not collated: a sample (``[x, y]``, x of shape (3,),
counted 3 by the rules above) or a batch the data set made itself (bulk reads, an iterable of
batches: counted right by them). Where the adapter sees such a loader (Lightning),
``collate="unbatched"`` says so, and an item holding a sample's own value beside its other fields
(a label: a number, a text or a 0-d tensor, which a batch holds one per sample), or a text beside
a number, is one sample; any other item is read by the rules above, as the batch it may be (one
sample of a sequence with per-step labels, or a bare tensor, still needs ``sample_counter=``).

Imports no framework: the adapters for Lightning, HF and Keras all use it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from collections.abc import Mapping
from typing import Any, Callable

from greencallbacks.meter import warn

__all__ = ["count_samples", "count_collated", "BatchCounter"]

_SCALARS = (str, bytes, int, float, complex, bool, type(None))
_VALUES = (str, bytes, int, float, complex)  # what a list of per-sample ids, labels or lengths holds


def count_samples(batch: Any, collate: str | None = None, pad_token_id: int | None = None) -> int | None:
    """Samples in ``batch`` (see the module's rules), or ``None`` when nothing in it says.

    ``collate``: what the DataLoader says made the batch, where the adapter can see it:
    ``"default"``, torch's ``default_collate`` (see :func:`count_collated`); ``"list"``,
    ``collate_fn=list``, whose batch is its samples (a list of equal-length tensors, which alone
    reads as fields ``[x, y]``); ``"rows"``, a collator known not to pack sequences into one row
    (HF's Trainer with any collator but a padding-free one); ``"unbatched"``, a DataLoader whose
    automatic batching is off (``batch_size=None``): the batch is one item of its data set (see
    :func:`_unbatched_item`); None, unknown. Known (any of them), a batch of one row is one
    sample: rows carrying restarting ``position_ids`` are pre-packed rows, each one sample at
    every batch size, not a padding-free collator's sequences.

    ``pad_token_id``: the token a padding-free collator pads its packed row with, where it pads it
    to a multiple (TRL's ``pad_to_multiple_of``); that padding is no sequence.
    """
    if pad_token_id is not None and isinstance(batch, Mapping) and _packed_positions(batch) is not None:
        return _one_row(batch, pad_token_id)
    if collate == "list" and type(batch) is list:
        return len(batch)
    if collate == "unbatched":
        return _unbatched_item(batch)
    # Fast paths for the usual batches, a tensor, ``(x, y)`` or a dict of tensors: this runs every
    # step, with the caches cold from the step's own work, where the general walk costs several
    # us. Exact type checks first: a failed getattr costs an exception, an ABC check a lookup.
    try:
        kind = type(batch)
        if kind is list or kind is tuple:
            if batch:
                shape = getattr(batch[0], "shape", None)
                if shape:
                    # (x, y): the fields share the leading dimension. If another disagrees, a list
                    # may be ragged samples (collate_fn=list), or the fields are not batch-first:
                    # the general walk decides. So does a list of another length, or a nested
                    # mapping (its fields may disagree with these: see _leaves_count_to_tensors).
                    samples = shape[0]
                    for field in batch[1:]:
                        other = getattr(field, "shape", None)
                        if other:
                            if other[0] != samples:
                                break
                        elif other is None and not _leaves_count_to_tensors(field, samples):
                            break
                    else:
                        return int(samples)
        elif kind is dict:
            values = iter(batch.values())
            shape = getattr(next(values, None), "shape", None)
            if shape:
                samples = shape[0]
                for value in values:
                    other = getattr(value, "shape", None)
                    if other:
                        if other[0] != samples:
                            break  # a (1,) per-batch field first is no batch of one: the walk decides
                    elif other is None and not _leaves_count_to_tensors(value, samples):
                        break
                else:
                    if samples == 1:  # maybe a padding-free collator's packed row of several sequences
                        return 1 if collate else _one_row(batch)
                    return int(samples)
        elif hasattr(kind, "shape"):  # a tensor or array (asked of the class: see below)
            shape = batch.shape
            if shape:
                return int(shape[0])
        elif isinstance(batch, Mapping):
            # HF BatchEncoding: asking the instance for a missing attribute costs ~6 us, its
            # __getattr__ raising (and chaining) an exception each time.
            shapes = [getattr(value, "shape", None) for value in batch.values()]
            leads = [shape[0] for shape in shapes if shape]
            if leads and len(set(leads)) == 1 and (len(leads) == len(shapes) or _lists_agree(batch.values(), leads[0])):
                return int(leads[0]) if leads[0] != 1 or collate else _one_row(batch)
    except Exception:  # noqa: BLE001 - a strided nested tensor raises on .shape; an unknown dim is None
        pass
    samples = _walk(batch, collate == "default")
    if samples == 1 and not collate and isinstance(batch, Mapping):
        return _one_row(batch)
    return samples


def _unbatched_item(item: Any) -> int | None:
    """One item of a data set that a DataLoader handed on without batching (``batch_size=None``):
    a sample, or a batch the data set made itself (bulk reads, an iterable of batches). A sample's
    own value (a label: a number, a text, a 0-d tensor) beside its other fields says one sample: a
    batch holds such a value once per sample, in a list or a tensor. So do a text beside a number,
    a sample's ``(text, label)``, which the general rule reads as 2 samples. Anything else is read
    by the general rule, as the batch it may be: ``[x (4, 3), y (4,)]`` is a batch of 4 the data
    set made, or one sample of 4 steps, which nothing in it tells apart."""
    if isinstance(item, Mapping):
        fields = list(item.values())
    elif isinstance(item, (list, tuple)):
        fields = list(item)
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        fields = [getattr(item, field.name, None) for field in dataclasses.fields(item)]
    else:
        fields = []
    fields = [field for field in fields if field is not None]  # an optional field left out says nothing
    values = [field for field in fields if _per_sample_value(field)]
    if values and (len(values) < len(fields) or _text_beside_number(values)):
        return 1
    return count_samples(item)


def _per_sample_value(field: Any) -> bool:
    """A number, a text or a 0-d tensor or array: one sample's value, never a batch's per-sample field."""
    return isinstance(field, _VALUES) or _shape(field) == ()


def _text_beside_number(values: list) -> bool:
    texts = sum(isinstance(value, (str, bytes)) for value in values)
    return 0 < texts < len(values)


# A packed row's sequence offsets (sequences + 1): transformers' and TRL's name, and the
# FlashAttention varlen kernels' own (a collator written for them: 3 sequences counted 1).
_OFFSETS = ("cu_seq_lens_q", "cu_seqlens")


def _one_row(batch: Mapping, pad_token_id: int | None = None) -> int | None:
    """A mapping whose leading dimension is 1: one sample, or a packed row of several sequences.

    Padding-free collators (transformers' ``DataCollatorWithFlattening``, TRL's ``padding_free``)
    concatenate a batch's sequences into ``input_ids`` of shape (1, tokens), with ``position_ids``
    of the same shape starting again at each sequence, and optionally FlashAttention's
    ``cu_seq_lens_q`` (sequences + 1 offsets). None: packed, on a device, without ``cu_seq_lens_q``,
    or padded with ``pad_token_id`` (its offsets then count each pad token as a sequence).
    """
    try:
        # `in` first: the usual batch of one has neither key, and a missing key costs BatchEncoding
        # a raised KeyError in `get`.
        offsets = next((key for key in _OFFSETS if key in batch), None)
        if offsets is not None and pad_token_id is None:
            shape = getattr(batch[offsets], "shape", ())
            if len(shape) == 1 and shape[0] > 0:
                return int(shape[0]) - 1  # its shape says it, on any device
        if "position_ids" not in batch:
            return 1
        positions = _packed_positions(batch)
        if positions is None:
            return 1  # an ordinary batch of one sample
        if _off_cpu(positions):
            # Counting there needs a read back, which waits for the device's queued work on every
            # step: uncounted instead, and the warning says why (`_why_uncounted`).
            return None
        # Each sequence starts again at the row's first position (0, or the collator's
        # position_ids_start); padding that the attention mask drops is no sequence.
        starts = positions == positions[:, :1]
        mask = batch.get("attention_mask")
        if mask is not None and tuple(getattr(mask, "shape", ())) == tuple(positions.shape):
            starts = starts & (mask != 0)
        samples = int(starts.sum())
        if pad_token_id is not None:
            samples -= _trailing_padding(starts & (batch["input_ids"] == pad_token_id))
        return samples
    except Exception:  # noqa: BLE001 - an odd mapping or tensor type: uncounted, not a guess
        return None


def _trailing_padding(pads: Any) -> int:
    """The length of the run of True at the end of the (1, tokens) flags ``pads``: shorter than
    the multiple the row is padded to, so read from the end rather than over the whole row."""
    row, run = pads[0], 0
    while run < len(row) and bool(row[len(row) - 1 - run]):
        run += 1
    return run


def _packed_positions(batch: Mapping) -> Any:
    """``position_ids`` of a packed row: (1, tokens), as ``input_ids``, over 2 tokens or more; else None."""
    positions = batch.get("position_ids")
    shape = getattr(positions, "shape", None)
    ids = getattr(batch.get("input_ids"), "shape", None)
    if shape is None or ids is None or len(shape) != 2 or shape[0] != 1 or shape[1] < 2 or tuple(ids) != tuple(shape):
        return None
    return positions


def _off_cpu(tensor: Any) -> bool:
    return getattr(getattr(tensor, "device", None), "type", "cpu") != "cpu"  # NumPy has no device (or "cpu")


def _why_uncounted(batch: Any) -> str:
    """What the warning adds for a batch that ``count_samples`` leaves uncounted on purpose."""
    try:
        # A packed row with its offsets is uncounted only where its collator pads it (count_samples).
        positions = _packed_positions(batch) if isinstance(batch, Mapping) and "cu_seq_lens_q" in batch else None
        if positions is not None and _off_cpu(positions):
            return (f" (its sequences are packed into one row, on {positions.device}, padded to a multiple: its "
                    "cu_seq_lens_q counts each pad token as a sequence, and leaving them out would read the tokens "
                    "back, synchronising the device on every step; a collator without pad_to_multiple_of is counted)")
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    try:
        leads = sorted({_extent(value) for _, value in _nested_fields(batch)} - {None})
        if len(leads) > 1:
            return (f" (its fields' leading dimensions differ: {', '.join(map(str, leads))}; which one, if any, "
                    "is the number of samples is not certain: packed tokens, graph nodes, a sequence-first tensor, "
                    "labels flattened to (B * T,)" + ("; a (1,) tensor is a per-batch field, or a batch of one"
                                                      if leads[0] == 1 else "") + ")")
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    try:
        graph = next((x for x in (batch, *(_fields_of(batch) or ())) if _graph_like(x)), None)
        if graph is not None:
            nodes = getattr(graph, "batch", None)
            where = (f"its batch vector is on {nodes.device}, and reading it back would synchronise the device "
                     "on every step" if nodes is not None and _off_cpu(nodes) else
                     "no batch vector either: a single graph, or nodes of several, whose len() counts attributes")
            return f" (a graph batch without num_graphs or ptr: {where})"
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    try:
        allowed: list = []
        certain = _first_certain(batch, False, allowed)
        readings = next((a for a in allowed if isinstance(a, set) and len(a) > 1), ())
        if isinstance(readings, _TextReadings):
            low, high = sorted(readings)
            return (" (a list in it holds tuples of texts of one length: a sample's texts each, or what "
                    "default_collate makes of a fixed-length list of texts per sample, one tuple per position, "
                    f"giving {low} or {high} samples; nothing else in the batch says which)")
        readings = sorted(readings)
        if readings:
            return (" (a list of tensors in it agrees on their leading dimension but not on their shapes: per-input "
                    "fields, or per-sample items such as images of different sizes, giving "
                    f"{readings[0]} or {readings[1]} samples; nothing else in the batch says which)")
        lead, length = next((a for a in allowed if isinstance(a, tuple) and a[0] != a[1]), (None, None))
        if lead is not None:
            return (f" (a list or tuple of tensors of one shape in it reads as fields, giving {lead} samples (their "
                    f"leading dimension), or as one sample each, giving {length}, as a zip collate, tuple(zip(*batch)), "
                    "of samples without labels gives; nothing else in the batch says which)")
        records = next((a for a in allowed if isinstance(a, _RecordReadings)), None)
        if records:
            (samples,) = records
            # Named by where it lies (batch[0], batch['features']): a batch holds several such lists.
            where = _where(batch, lambda x: type(x) in (list, tuple) and len(x) == samples
                           and isinstance(_items_of_sequence(x, False)[0], _RecordReadings))
            other = f" (it gives {certain})" if type(certain) is int else ""
            return (f" (a list of {samples} records (dicts, tuples or dataclasses) in it{where} reads as {samples} "
                    f"samples, one each such as detection targets, which the rest of the batch contradicts{other}; "
                    "or as one batch per input, such as sentence-transformers' ([features_a, features_b], labels))")
        (samples,) = next((a for a in allowed if isinstance(a, set) and len(a) == 1), {None})
        if samples is not None:
            return (f" (a list of {samples} tensors in it reads as {samples} samples, one each (sequences of "
                    "different lengths, or numbers), which the rest of the batch contradicts; or as fields that "
                    "disagree, such as an EmbeddingBag's (tokens, offsets))")
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    try:
        positions = _packed_positions(batch) if isinstance(batch, Mapping) else None
        if positions is None or not _off_cpu(positions):
            return ""
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    return (
        f" (its sequences are packed into one row, on {positions.device}, and counting its position_ids "
        "there would synchronise the device on every step; a collator that also returns cu_seq_lens_q, "
        "such as DataCollatorWithFlattening(return_flash_attn_kwargs=True), is counted by its shape)"
    )


def _where(batch: Any, found: Callable[[Any], bool]) -> str:
    """Where the first field of ``batch`` (breadth first, as the walk goes) that ``found`` picks
    lies, as ``, batch[0],`` or ``, batch['features'],`` for the warning; "" if none."""
    queue: deque[tuple[Any, str]] = deque([(batch, "batch")])
    while queue:
        item, path = queue.popleft()
        if item is not batch and found(item):
            return f", {path},"
        if isinstance(item, Mapping):
            queue.extend((value, f"{path}[{key!r}]") for key, value in item.items())
        elif isinstance(item, tuple) and hasattr(item, "_fields"):
            queue.extend((getattr(item, name), f"{path}.{name}") for name in item._fields)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            queue.extend((getattr(item, f.name), f"{path}.{f.name}") for f in dataclasses.fields(item))
        elif type(item) in (list, tuple):
            queue.extend((value, f"{path}[{i}]") for i, value in enumerate(item))
    return ""


def _leading(item: Any) -> int | None:
    """The leading dimension of a tensor-like ``item``; None if it is not one (or is 0-d)."""
    if getattr(item, "is_nested", False):  # torch.nested, strided layout: `.shape` raises
        return int(item.size(0))
    try:
        shape = getattr(item, "shape", None)
    except Exception:  # noqa: BLE001
        return None
    if shape is None or isinstance(item, type):
        return None
    try:
        if len(shape) == 0 or shape[0] is None:
            return None
        return int(shape[0])
    except (TypeError, ValueError):  # an unknown dimension (a symbolic one in a traced graph)
        return None


def _values_length(field: Any) -> int | None:
    """The length of a list or tuple of texts or numbers (a batch's ids, labels or sequence
    lengths), which a batch's tensors must agree with as their leading dimension; else None."""
    if (type(field) is list or type(field) is tuple) and field and all(isinstance(v, _VALUES) for v in field):
        return len(field)
    return None


def _leaves_count_to_tensors(field: Any, samples: int) -> bool:
    """Whether a field without a shape leaves a batch's count to its tensors' leading dimension
    ``samples``: a number, a text or None, a list or tuple of ``samples`` items (ids, texts,
    records, a tensor each: its length is compared, not its items, on every step), or a dict of
    tensors of ``samples`` rows. Another mapping, a dataclass, another object, or a list of another
    length may hold fields that disagree (targets (B * T,) beside inputs (B, T, F) one level
    down): the walk decides."""
    if isinstance(field, _SCALARS):
        return True
    if type(field) is dict:  # targets {"a": (B,), "b": (B,)} beside x: no walk on every step
        for value in field.values():
            shape = getattr(value, "shape", None)
            if not shape or shape[0] != samples:
                return False
        return True
    return (type(field) is list or type(field) is tuple) and len(field) == samples


def _lists_agree(fields: Any, samples: int) -> bool:
    """Whether every field without a leading dimension among ``fields`` leaves the count to the
    tensors' ``samples`` (see ``_leaves_count_to_tensors``). (A function, not a generator
    expression in ``count_samples``: its closure costs every call.)"""
    for field in fields:
        if getattr(field, "shape", None) is None and not _leaves_count_to_tensors(field, samples):
            return False
    return True


def _extent(field: Any) -> int | None:
    """A field's leading dimension, or as many as a list of texts or numbers holds."""
    lead = _leading(field)
    return _values_length(field) if lead is None else lead


def _shape(item: Any) -> tuple | None:
    try:
        return tuple(item.shape)
    except Exception:  # noqa: BLE001
        return None


def _is_record(item: Any) -> bool:
    """One sample's worth of fields: a mapping, a dataclass instance or a tuple/list."""
    return isinstance(item, (Mapping, list, tuple)) or (dataclasses.is_dataclass(item) and not isinstance(item, type))


def _items_of_sequence(items: list | tuple, top: bool) -> tuple[Any, bool]:
    """A list/tuple: (its length, True) when its items are samples; (None, False) when they are fields.

    ``((lead, length), False)``: same-shaped tensors inside a batch (or one tensor), ambiguous
    (their leading dimension is a guess; their length, the other reading). ``({lead, length},
    False)``: tensors inside a batch that agree on their leading dimension but not their shapes:
    per-input fields (``((x_a, x_b), y)``: the leading dimension) or per-sample items (images of
    different sizes, channels first: the length); only the rest of the batch can say which.
    """
    if not items:
        return None, False
    if all(isinstance(x, _SCALARS) for x in items):
        return len(items), True  # labels, texts
    if not top and all(isinstance(x, _SCALARS) or _shape(x) == () for x in items):
        # 0-d tensors, one per sample: a zip collate's labels (TensorDataset items). Taken for
        # nothing, the images or vectors beside them gave their channels or width (3 for 5). A
        # certain count elsewhere wins (per-loss weights beside x): only where there is none.
        return frozenset({len(items)}), False
    if not top and all(type(x) in (list, tuple) and x and all(isinstance(v, str) for v in x) for x in items):
        # Texts by sample (a sample's words), or default_collate's transposition of a sample's
        # fixed-length list of texts: one tuple of B texts per position (4 multiple-choice options
        # gave 4). Of one length other than the list's, only the rest of the batch says which.
        lengths = {len(x) for x in items}
        if len(lengths) == 1 and len(items) not in lengths:
            return _TextReadings({len(items), *lengths}), False
        return len(items), True
    if not top and all(_is_record(x) for x in items):
        # One record per sample inside a batch (detection targets), unless the rest of the batch
        # gives another count: then they may be per-input batches (sentence-transformers'
        # ``([features_a, features_b], labels)`` counted 2 per batch of 16, where the list came first).
        return _RecordReadings(items), False
    if top and _per_sample_records(items):
        # A list of samples (collate_fn=list), one too: batch_size=1, or a last batch of one.
        return len(items), True
    if top and type(items) is list and len(items) > 1 and _samples_of_one_kind(items):
        return len(items), True  # token-id lists, or objects of one class: one per sample
    leads = [_leading(x) for x in items]
    if not top and len(items) == 1 and leads[0] is not None:
        # One tensor: a field ((x,), y) or one sample (a zip collate's last batch of one), as
        # same-shaped tensors are.
        return (leads[0], 1), False
    if len(items) > 1 and all(n is not None for n in leads):
        shapes = [_shape(x) for x in items]
        ndims = {len(s) for s in shapes if s is not None}
        if len(ndims) == 1:
            if top:
                # Top level: (x, y) shares the leading dimension; samples of one kind that differ
                # only in length (variable-length sequences, collate_fn=list) do not. A tuple is
                # always fields (default_collate gives lists; a tuple of tensors is the user's).
                if type(items) is list and len(set(leads)) > 1 and len({s[1:] for s in shapes}) == 1:
                    return len(items), True
            elif len(set(shapes)) > 1:
                if len(set(leads)) > 1:
                    # Ragged samples (sequences of different lengths), unless the batch says
                    # otherwise: fields that disagree, ((tokens, offsets), labels) for an EmbeddingBag,
                    # were 2 samples. Where the rest of the batch gives another count, uncounted.
                    return {len(items)}, False
                return {leads[0], len(items)}, False  # per-input fields, or images of different sizes
            else:
                return (leads[0], len(items)), False  # same-shaped tensors inside a batch: ambiguous
    return None, False


class _TextReadings(set):
    """The two readings of a list of texts by sample or by position (``_items_of_sequence``), told
    apart from a list of tensors' for the warning."""


class _RecordReadings(set):
    """A list of records' one reading, a sample each (``_items_of_sequence``), told apart from a
    list of tensors' for the warning."""

    def __init__(self, items: list | tuple) -> None:
        super().__init__({len(items)})
        self.items = items  # read only where another count contradicts it (``batches_of``)

    def batches_of(self, count: int) -> bool:
        """Whether every record is a mapping of tensors of ``count`` rows: one batch per input
        (sentence-transformers' ``[features_a, features_b]``), not a record per sample."""
        rows = [{_leading(value) for value in x.values()} - {None} if isinstance(x, Mapping) else set()
                for x in self.items]
        return all(leads == {count} for leads in rows)


def _samples_of_one_kind(items: list) -> bool:
    """A top-level list of Python lists of integers (token ids before padding), or of objects of one
    class that are neither tensors nor containers: samples, not fields (fields are tensors, or of
    different kinds). Read as fields, the first item's length was taken for the batch's."""
    first = items[0]
    if type(first) is list:  # token ids: integers (lists of texts are fields: [sources, targets])
        return all(type(x) is list and all(type(v) is int for v in x) for x in items)
    kind = type(first)
    # No tensor-like at all (asked of the class): a 0-d tensor has no leading dimension, yet is a
    # field ([loss_weight, x, y]), not one sample of a list of them.
    return (not isinstance(first, (Mapping, tuple, *_SCALARS)) and not hasattr(kind, "shape")
            and not dataclasses.is_dataclass(first) and all(type(x) is kind for x in items))


def _per_sample_records(items: list | tuple) -> bool:
    """A top-level list of records: samples (``collate_fn=list``), or fields (``[inputs, targets]``)?

    Samples are records of one shape: dicts with the same keys, dataclasses of one type, or (in a
    list, not a tuple) tuples of one length. ``tuple(zip(*samples))`` (torchvision's detection
    collate) is a tuple of fields; ``default_collate`` of ``(inputs, targets)`` gives fields with
    different keys. A single record is a sample as well: ``default_collate`` wraps no collated
    dict in a list (a dict sample gives a dict) and gives no tuples at all (a tuple sample gives
    a list of fields), so ``[{...}]`` and ``[(x, y)]`` come from ``collate_fn=list`` (or a collate
    returning its samples) with one sample.
    """
    first = items[0]
    if isinstance(first, Mapping):
        keys = set(first.keys())
        return all(isinstance(x, Mapping) and set(x.keys()) == keys for x in items)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return all(type(x) is type(first) for x in items)
    if type(items) is list and isinstance(first, tuple):
        # One type too: named tuples of different classes are fields (``default_collate`` keeps a
        # named tuple's class: ``[Inputs(ids, mask), Targets(y, w)]`` counted 2).
        return all(type(x) is type(first) and len(x) == len(first) for x in items)
    return False


# Where a batch's tensor fields disagree on their leading dimension, these name the sample
# dimension of a model's inputs in transformers (as 2-d or more: a 1-d input_ids is a packed row),
# and TRL's online trainers' (GRPO's micro-batch has prompt and completion ids, no input_ids).
_INPUT_KEYS = ("input_ids", "attention_mask", "inputs_embeds", "input_values", "input_features", "pixel_values",
               "prompt_ids", "completion_ids")


def _fields_of(batch: Any) -> list | None:
    """A batch's own fields: a mapping's values, a dataclass's or named tuple's fields, a list's or
    tuple's items; None for anything else."""
    if isinstance(batch, Mapping):
        return list(batch.values())
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    return list(batch) if isinstance(batch, (list, tuple)) else None


def _nested_fields(batch: Any, collated: bool = False) -> list[tuple[Any, Any]]:
    """A batch's fields at every depth of its mappings, dataclasses and named tuples (and of the
    batch itself as a list or tuple, ``(x, y)``; in a ``default_collate`` batch, of its lists too),
    as (name, value): its tensors and lists of texts or numbers, whose leading dimension or length
    is the number of samples or not. Lists of tensors or records inside a batch are no fields here
    (samples or fields: see ``_items_of_sequence``), nor are other objects (graphs, PackedSequence).
    A field's place says nothing of its rows: targets (B * T,) beside inputs (B, T, F) in another
    mapping, or one level above them, are fields that disagree as they are side by side."""
    fields = _Fields()
    level = [batch]
    for depth in range(32):  # deeper is no batch (and an object that holds itself ends)
        nested = []
        for item in level:
            named = _named_fields(item, depth == 0, collated)
            if named is None or (type(item) not in (list, tuple, dict) and _says_its_size(item)):
                fields.whole = False  # something else the walk reads (a list of records, an object)
            if named is None:
                continue
            for name, value in named:
                extent = _extent(value)
                if extent is not None:
                    fields.append((name, value))
                    fields.extents.add(extent)
                elif not isinstance(value, _SCALARS):
                    nested.append(value)
        if not nested:
            break
        level = nested
    return fields


class _Fields(list):
    """``_nested_fields``' answer. ``extents``: their leading dimensions or lengths (more than one:
    they disagree). ``whole``: the batch holds nothing else but numbers, texts and None, and the
    mappings, dataclasses and named tuples (or top-level list) that hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.extents: set[int] = set()
        self.whole = True


def _says_its_size(item: Any) -> bool:
    """Whether a batch object names its own size (``num_graphs``, ``batch_size``: see the walk)."""
    return getattr(item, "num_graphs", None) is not None or getattr(item, "batch_size", None) is not None


def _named_fields(item: Any, top: bool, collated: bool) -> list | None:
    """(name, value) for each field of a mapping, dataclass or named tuple, or of a list or tuple
    at the top or in a ``default_collate`` batch (name None); None for anything else."""
    if isinstance(item, Mapping):
        return list(item.items())
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return [(f.name, getattr(item, f.name)) for f in dataclasses.fields(item)]
    if isinstance(item, tuple) and hasattr(item, "_fields"):
        if hasattr(item, "batch_sizes"):
            return None  # torch's PackedSequence: steps and batch sizes, counted as a whole
        return list(zip(item._fields, item))
    if (top or collated) and isinstance(item, (list, tuple)):
        return [(None, value) for value in item]
    return None


def _by_fields(batch: Any, collated: bool, fields: _Fields | None = None) -> Any:
    """What the batch's fields at every depth (``_nested_fields``) say. Where they give different
    leading dimensions (packed tokens beside per-sequence lengths, graph nodes beside graph labels,
    a sequence-first (T, B, F) tensor beside its labels, labels flattened to (B * T,), 3 names
    beside a batch of 8), which one is the sample count is a guess: ``_disagreeing_fields``
    decides (a count, or None). Where they agree and are the whole batch, their count (what the
    walk would find, read once); else ``_UNSEEN``: the walk goes on."""
    if fields is None:
        fields = _nested_fields(batch, collated)
    if len(fields.extents) > 1:
        return _disagreeing_fields(batch, fields)
    return next(iter(fields.extents)) if fields.extents and fields.whole else _UNSEEN


def _disagreeing_fields(batch: Any, fields: list) -> int | None:
    """Fields that disagree, side by side or at different depths: a packed row's sequences; else a
    model's named input; else images or video (``_disagreeing``); else uncounted. Never the field
    that comes first: which one the walk met first was the order of a dict's keys."""
    if isinstance(batch, Mapping) and (any(key in batch for key in _OFFSETS) or _packed_positions(batch) is not None):
        return _one_row(batch)
    named = _named_input(fields)
    if not named:
        return _disagreeing([value for _, value in fields])
    if len(named) > 1:
        return None  # inputs of one name that disagree (queries beside their documents' input_ids)
    (samples,) = named
    for name, value in fields:
        shape = _shape(value)
        if shape is None or len(shape) < 2 or shape[0] == samples:
            continue
        if name == "labels":
            # Per-token labels of other rows: input_ids packed (1, tokens) without position_ids
            # beside labels (B, T) counted 1; which one the samples are is not certain.
            return None
        if len(shape) >= 4 and name not in _INPUT_KEYS:
            # Images of other rows that no model input names: (images (B, 3, H, W), labels (B,),
            # {"input_ids": (C, T)}), class prompts beside a batch of images, counted C for B.
            return None
    if samples == 1 and any(name in _OFFSETS or name == "position_ids" for name, _ in fields):
        # A row beside fields of other rows, its offsets or positions in a dataclass, a named tuple
        # or a nested mapping: a packed row of several sequences (it counted 1 for 3), or a batch
        # of one, read as a mapping's row is, where no two of its fields share those names.
        names = [name for name, _ in fields if name in _OFFSETS or name == "position_ids"]
        return _one_row(dict(fields)) if len(names) == len(set(names)) else None
    return samples


def _named_input(fields: list) -> set:
    """The leading dimensions of the first of a model's named inputs (``_INPUT_KEYS``, in that
    order) of 2 dimensions or more among ``fields`` ((name, value), ``_nested_fields``), wherever
    they lie; empty if none."""
    for key in _INPUT_KEYS:
        # pixel_values of 2 dimensions are every image's patches in a row each (Qwen-VL's, beside
        # image_grid_thw): 256 for 4 samples of 64 patches, where no input_ids came first.
        least = 3 if key == "pixel_values" else 2
        leads = {_leading(value) for name, value in fields
                 if name == key and len(_shape(value) or ()) >= least} - {None}
        if leads:
            return leads
    return set()


def _named_list(batch: Mapping, fields: list) -> int | None:
    """The length of a model's named input given as a list of arrays or tensors, one per sample:
    HF image processors and feature extractors with ``return_tensors=None`` (``{"pixel_values":
    [B arrays]}``, whose leading dimension, the channels, counted 3 for 4 images)."""
    for key in _INPUT_KEYS:
        items = batch[key] if key in batch else None
        if type(items) in (list, tuple) and items and not any(isinstance(x, _SCALARS) for x in items):
            # Beside fields of another extent (input_ids (2, T) beside a sample's 3 images), at any
            # depth, the rest of the walk decides.
            others = {_extent(value) for _, value in fields if value is not items} - {None}
            return len(items) if others <= {len(items)} else None
    return None


def _disagreeing(fields: Any) -> int | None:
    """Fields that disagree: images or video (tensors of 4 dimensions or more, agreeing) name the
    samples, as in a detection batch (images beside all its boxes); else uncounted."""
    leads = {shape[0] for shape in map(_shape, fields) if shape is not None and len(shape) >= 4}
    return int(leads.pop()) if len(leads) == 1 else None


def count_collated(batch: Any) -> int | None:
    """Samples in a batch that torch's ``default_collate`` made (the DataLoader says so): there a
    list or tuple is the batch's fields, or its samples only when they are strings or numbers, so
    the batches that :func:`count_samples` alone cannot tell from ``collate_fn=list`` count
    exactly: samples made only of strings (``(source, target)`` text pairs: a list of two tuples
    of B strings) and 1-tuples of dicts (``[{"x": X}]``)."""
    return count_samples(batch, "default")


def _walk(batch: Any, collated: bool = False) -> int | None:
    """The general case: breadth first over the batch's fields; the first certain count wins, if
    every list of tensors that allows two readings (see ``_items_of_sequence``) allows it. Else the
    one count those lists allow together (a list of same-shaped tensors: its leading dimension or
    its length), or None. ``collated``: see :func:`count_collated`."""
    # Each such list's readings (a set); a list of 0-d tensors' length (a frozenset); same-shaped
    # tensors' (lead, length).
    allowed: list = []
    count = _first_certain(batch, collated, allowed)
    readings = [a for a in allowed if isinstance(a, set)]
    guess = None
    if count is _UNSEEN:
        readings += [set(a) for a in allowed if isinstance(a, frozenset)]  # lists of 0-d tensors
        guesses = [a for a in allowed if isinstance(a, tuple)]
        if len({lead for lead, _ in guesses}) > 1 or any(length > 1 for _, length in guesses) or _zipped(batch):
            # Same-shaped tensors in a list are fields (their leading dimension) or one sample each
            # (their length): a zip collate of samples without labels, tuple(zip(*batch)), gives
            # ((image, ..., image),), whose leading dimension, the channels, counted 3 for 5
            # images; beside its (1,) labels, 3 and 1. Only a count both readings allow is exact.
            # One tensor alone in a list reads as a field ((x,), y), except in a zip collate's batch.
            readings += [set(guess) for guess in guesses]
        elif guesses:
            guess = guesses[0][0]
    if type(count) is int:
        # Per-input batches in a list whose rows agree with the count: ([features_a, features_b],
        # labels) counts 16, as the fast path counts (labels, [features_a, features_b]).
        readings = [r for r in readings if not (isinstance(r, _RecordReadings) and r.batches_of(count))]
    if not readings:
        return guess if count is _UNSEEN else count
    either = set.intersection(*readings)
    if count is not _UNSEEN:
        # The rest of the batch says which reading; a model's named input overrules a list beside
        # it (a sample's several images, or image patches, with input_ids).
        return count if count in either or _named_input(_nested_fields(batch, collated)) == {count} else None
    if guess is not None and guess in either:
        return guess
    return either.pop() if len(either) == 1 else None  # the readings agree; else nothing says


_UNSEEN = object()  # no certain count in the batch


def _zipped(batch: Any) -> bool:
    """Whether ``batch`` has the shape ``tuple(zip(*samples))`` gives: a tuple of tuples of one length."""
    return (type(batch) is tuple and bool(batch) and all(type(x) is tuple for x in batch)
            and len({len(x) for x in batch}) == 1)


def _first_certain(batch: Any, collated: bool, allowed: list) -> Any:
    """The certain count of a breadth-first walk over the batch's fields: the one that every field
    giving one at the shallowest such depth gives (None where two differ); ``_UNSEEN`` if none.
    The rest of that depth is read too, so the order of a dict's keys decides nothing. What lists
    of tensors up to that depth allow without certainty goes to ``allowed``. Fields that disagree
    at any depth of the batch's mappings, or all of it in them: ``_by_fields``, at the top."""
    queue: deque[tuple[Any, int]] = deque([(batch, 0)])  # (item, depth)
    found, found_at = _UNSEEN, -1
    while queue:
        item, depth = queue.popleft()
        if found_at >= 0 and depth > found_at:
            break
        count = _certain(item, depth, collated, allowed, queue)
        if count is _UNSEEN:
            continue
        if count is None or (found is not _UNSEEN and count != found):
            return None
        found, found_at = count, depth
    return found


def _certain(item: Any, depth: int, collated: bool, allowed: list, queue: deque) -> Any:
    """One item of ``_first_certain``'s walk: its certain count (may be None: fields that
    disagree), or ``_UNSEEN``, its fields queued and what a list allows put in ``allowed``."""
    top = depth == 0
    if isinstance(item, _SCALARS):
        return _UNSEEN
    lead = _leading(item)
    if lead is not None:
        return lead
    if isinstance(item, tuple) and hasattr(item, "batch_sizes") and hasattr(item, "unsorted_indices"):
        # torch's PackedSequence: its data is every sequence's steps; batch_sizes[0] (a CPU
        # tensor, no device read) is how many sequences are in the batch.
        return int(item.batch_sizes[0])
    if top and (isinstance(item, Mapping) or dataclasses.is_dataclass(item)
                or (isinstance(item, tuple) and hasattr(item, "_fields"))):
        fields = _nested_fields(item, collated)
        if isinstance(item, Mapping):
            samples = _named_list(item, fields)
            if samples is not None:
                return samples
        said = _by_fields(item, collated, fields)
        if said is not _UNSEEN:
            return said
    kind = type(item)
    if kind is not list and kind is not tuple and kind is not dict:
        # Batch objects of graph and tensor-dict libraries say how many samples they hold.
        for name in ("num_graphs", "batch_size"):
            value = getattr(item, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if name == "batch_size" and value is not None and not callable(value):
                try:
                    return int(value[0])  # TensorDict: a torch.Size
                except (TypeError, ValueError, IndexError, KeyError):
                    pass
    if isinstance(item, Mapping):
        queue.extend((value, depth + 1) for value in item.values())
    elif isinstance(item, tuple) and hasattr(item, "_fields"):  # a named tuple: its fields
        queue.extend((value, depth + 1) for value in item)
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        queue.extend((getattr(item, f.name), depth + 1) for f in dataclasses.fields(item))
    elif collated and isinstance(item, (list, tuple)) and not all(isinstance(x, _SCALARS) for x in item):
        if top:
            said = _by_fields(item, collated)
            if said is not _UNSEEN:
                return said
        queue.extend((value, depth + 1) for value in item)
    elif isinstance(item, (list, tuple)):
        count, certain = _items_of_sequence(item, top)
        if certain:
            return count
        if count is not None:
            allowed.append(count)
        else:
            if top:
                said = _by_fields(item, collated)
                if said is not _UNSEEN:
                    return said
            queue.extend((value, depth + 1) for value in item)
    elif _graph_like(item):
        return _graphs(item)  # its len() is its attribute count (PyTorch Geometric's Data)
    elif hasattr(item, "__len__"):
        try:
            return len(item)
        except TypeError:
            pass
    return _UNSEEN


def _graph_like(item: Any) -> bool:
    return hasattr(item, "edge_index") or hasattr(item, "ptr")


def _graphs(graph: Any) -> int | None:
    """Graphs in a graph batch without ``num_graphs`` (PyTorch Geometric's attribute names):
    ``ptr`` (graphs + 1 offsets) by its shape, else the CPU ``batch`` vector (graph of each node)
    by its largest index; None otherwise: ``batch`` on a device (reading it back would synchronise
    every step), or a single graph's ``Data``, whose ``len()`` (its attribute count) was taken."""
    ptr = _shape(getattr(graph, "ptr", None))
    if ptr is not None and len(ptr) == 1 and ptr[0] > 0:
        return int(ptr[0]) - 1
    nodes = getattr(graph, "batch", None)
    shape = _shape(nodes)
    if shape is not None and len(shape) == 1 and shape[0] > 0 and not _off_cpu(nodes):
        return int(nodes.max()) + 1
    return None


# ------------------------------------------------------------------------------- per phase
class BatchCounter:
    """Counts each completed batch into a tracker's open phase: samples, and tokens if asked.

    Args:
        sample_counter: ``batch -> int``; default :func:`count_samples`. May return ``None`` for a
            batch it cannot count.
        token_counter: ``batch -> int`` tokens in the batch (e.g. ``lambda b: int(b["attention_mask"].sum())``),
            giving ``energy_j_per_token``; default: no token count.
        owner: the callback's name, for the warning.
        batch_name: what the counters are given, for the warning (Keras: ``predict`` outputs).

    A batch that cannot be counted (or a counter that raises or returns something other than a
    non-negative int) is recorded as uncounted: the phase's record says ``samples_counted:
    false`` and has no per-sample values; a batch whose ``token_counter`` fails so, ``tokens_counted:
    false`` and no per-token value. One warning per run names the batch's type and the fix.
    """

    def __init__(
        self,
        sample_counter: Callable[[Any], int | None] | None = None,
        token_counter: Callable[[Any], int] | None = None,
        owner: str = "EnergyCallback",
        batch_name: str = "batch",
    ) -> None:
        check_counter("sample_counter", sample_counter)
        check_counter("token_counter", token_counter)
        self.sample_counter = sample_counter or count_samples
        self.custom_samples = sample_counter is not None  # the user's rule wins over a framework's own count
        # What made the batches of the phase now running, where an adapter sees the data loaders
        # ("default", "list", "unbatched" or None: see count_samples).
        self.collate: str | None = None
        # The token a padding-free collator pads its packed row with, where it pads it (see count_samples).
        self.pad_token_id: int | None = None
        # Rows a sample makes in the batches of the phase now running, where an adapter knows the
        # collator lays each sample out as several (TRL's preference collators: chosen and rejected,
        # 2); a count that they do not divide is uncounted.
        self.rows_per_sample = 1
        self.token_counter = token_counter
        # Where the batches of the phase now running hold one batch of each of several loaders (a
        # fit with several training loaders): ``batch -> [each loader's batch]``, or None where a
        # batch is not so shaped (see count_tokens).
        self.loader_batches: Callable[[Any], list | None] | None = None
        self.owner = owner
        self.batch_name = batch_name
        self._warned_runs: set[tuple[str, str]] = set()

    def count(self, batch: Any, run_id: str = "") -> tuple[int | None, int | None]:
        """(samples or None, tokens or None) in one batch; warns once per run (and counter) about an uncountable one."""
        if self.token_counter is None and not self.custom_samples:
            # The default, on every step: no layers (they cost as much as the count itself).
            try:
                samples = count_samples(batch, self.collate, self.pad_token_id)
                if self.rows_per_sample != 1:
                    samples = self._samples_of_rows(samples)
            except Exception:  # noqa: BLE001 - a batch object whose attributes raise
                samples = None
            if samples is None:
                self._warn("sample_counter", count_samples, batch, None, None, run_id)
            return samples, 0
        return self.count_samples(batch, run_id), self.count_tokens(batch, run_id)

    def count_samples(self, batch: Any, run_id: str = "") -> int | None:
        """Samples in one batch (None where it fails, warned once per run), its tokens left to the
        caller: an adapter that counts them on part of the batch (see ``count_tokens``)."""
        default = (functools.partial(count_samples, collate=self.collate, pad_token_id=self.pad_token_id)
                   if self.collate or self.pad_token_id is not None else count_samples)
        if self.rows_per_sample != 1 and not self.custom_samples:
            default = functools.partial(self._counted_in_rows, default)
        return self._apply("sample_counter", self.sample_counter if self.custom_samples else default, batch, run_id)

    def count_tokens(self, batch: Any, run_id: str = "") -> int | None:
        """Tokens in one batch by the ``token_counter``: 0 without one, None where it fails (warned
        once per run; the tracker marks the phase ``tokens_counted: false``, as a count of the other
        batches' tokens alone would give too high a cost per token)."""
        if self.token_counter is None:
            return 0
        if self.loader_batches is None:
            return self._apply("token_counter", self.token_counter, batch, run_id)
        # A batch of several loaders: given first, as promised, the batch the step is given (a
        # counter written for it); one written for a loader's batch (``b["attention_mask"]``) fails
        # there, and counts each loader's batch: their sum, where it counts every one.
        tokens, value, error = self._tried(self.token_counter, batch)
        if tokens is None:
            parts = self.loader_batches(batch)
            apart = [self._tried(self.token_counter, part)[0] for part in parts or ()]
            if parts and None not in apart:
                return sum(apart)
            self._warn("token_counter", self.token_counter, batch, value, error, run_id)  # about the whole batch
        return tokens

    def _samples_of_rows(self, rows: int | None) -> int | None:
        rows_per_sample = self.rows_per_sample
        return None if rows is None or rows % rows_per_sample else rows // rows_per_sample

    def _counted_in_rows(self, default: Callable, batch: Any) -> int | None:
        return self._samples_of_rows(default(batch))

    def add(self, tracker: Any, batch: Any) -> None:
        """Count one completed batch into ``tracker``'s innermost open phase."""
        if self.token_counter is None and not self.custom_samples:
            try:
                samples = count_samples(batch, self.collate, self.pad_token_id)  # the per-step path, as in `count`, one call shorter
                if self.rows_per_sample != 1:
                    samples = self._samples_of_rows(samples)
            except Exception:  # noqa: BLE001
                samples = None
            if samples is None:
                self._warn("sample_counter", count_samples, batch, None, None, tracker.run_id)
            tracker.add_samples(samples)
            return
        samples, tokens = self.count(batch, tracker.run_id)
        tracker.add_samples(samples, tokens=tokens)

    def _apply(self, name: str, counter: Callable, batch: Any, run_id: str) -> int | None:
        count, value, error = self._tried(counter, batch)
        if count is None:
            self._warn(name, counter, batch, value, error, run_id)
        return count

    @staticmethod
    def _tried(counter: Callable, batch: Any) -> tuple[int | None, Any, Exception | None]:
        """(the count, or None where it failed; what the counter returned; what it raised)."""
        error = None
        try:
            value = counter(batch)
        except Exception as exc:  # noqa: BLE001 - a counter's bug must not stop training
            value, error = None, exc
        if type(value) is int and value >= 0:
            return value, value, None
        if value is not None and not isinstance(value, bool):
            try:  # a 0-d tensor or NumPy integer from a user's counter
                number = int(value)
                if number == value and number >= 0:
                    return number, value, None
            except (TypeError, ValueError, RuntimeError):
                pass
        return None, value, error

    def _warn(self, name: str, counter: Callable, batch: Any, value: Any, error: Exception | None, run_id: str) -> None:
        if (run_id, name) in self._warned_runs:
            return
        self._warned_runs.add((run_id, name))
        kind = f"a {self.batch_name} of type {type(batch).__module__}.{type(batch).__qualname__}"
        if getattr(counter, "func", counter) in (count_samples, count_collated, self._counted_in_rows):
            what = f"could not count the samples in {kind}{_why_uncounted(batch)}"
        elif error is not None:
            what = f"{name} raised {error!r} on {kind}"
        else:
            what = f"{name} returned {value!r} (not a non-negative int) for {kind}"
        if name == "sample_counter":
            warn(
                f"greencallbacks: {self.owner} {what}. The records of the phases with such batches say "
                "samples_counted: false and carry no per-sample values (this warning comes once per run). "
                f"Pass {self.owner}(sample_counter=lambda {self.batch_name.split()[-1]}: ...) returning the "
                f"number of samples in a {self.batch_name}."
            )
        else:
            warn(
                f"greencallbacks: {self.owner} {what}. The records of the phases with such batches say "
                "tokens_counted: false and carry no energy_j_per_token (this warning comes once per run). "
                f"Fix token_counter= (a function {self.batch_name.split()[-1]} -> int)."
            )


def check_counter(name: str, counter: Any) -> None:
    """Construction-time check shared by the adapters: a counter is a function or None."""
    if counter is not None and not callable(counter):
        raise ValueError(f"{name} must be a function batch -> int, or None; got {counter!r}")
