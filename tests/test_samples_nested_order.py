"""Fields that disagree one level down counted by the order of a dict's keys (2026-12-07).

``{"targets": {"y": (B * T,)}, "inputs": {"x": (B, T, 3)}}``, labels flattened for a sequence
model, counted 24 a batch of 4 (the targets first) or 4 (the inputs first), as exact: the walk
took the first tensor it met at a depth, where the top level calls such fields a disagreement
(a model's named input or images decide, else uncounted). Fields one level above the others
(``{"inputs": {"x": ...}, "y": (24,)}``) counted the shallower one, and a per-batch (1,) tensor
beside a nested batch (``{"inputs": {"x": (6, 3)}, "w": (1,)}``) counted 1. Now a field's place
in the batch says nothing: its fields at every depth are read as the top level's are, and every
order of every dict's keys gives one count.

"The inputs carry the batch dimension" would be no rule: PyTorch's word-language-model example
gives data (T, B) beside targets flattened to (T * B,), where the input's leading dimension is
the sequence length.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

torch = pytest.importorskip("torch", reason="the batches are torch tensors")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.samples import count_samples  # noqa: E402
from tests.test_samples_guesses import warnings_for  # noqa: E402

B, T = 4, 6


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape)


# ------------------------------------------------------------------------- every key order
def key_orders(batch, limit: int = 120) -> list:
    """``batch`` with the keys of each of its dicts in every order (nested too; at most ``limit``)."""
    if type(batch) is dict or type(batch).__name__ == "BatchEncoding":
        keys = list(batch)
        inner = {key: key_orders(batch[key], 24) for key in keys}
        out = []
        for order in itertools.permutations(keys) if len(keys) <= 6 else (keys, keys[::-1]):
            for values in itertools.islice(itertools.product(*(inner[key] for key in order)), 24):
                out.append(type(batch)(dict(zip(order, values))))
        return out[:limit]
    if type(batch) in (list, tuple) or (isinstance(batch, tuple) and hasattr(batch, "_fields")):
        make = (lambda items: type(batch)(*items)) if hasattr(batch, "_fields") else type(batch)
        return [make(items) for items in itertools.islice(itertools.product(*map(key_orders, batch)), limit)]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        names = [f.name for f in dataclasses.fields(batch)]
        return [dataclasses.replace(batch, **dict(zip(names, values)))
                for values in itertools.islice(itertools.product(*(key_orders(getattr(batch, n)) for n in names)), limit)]
    return [batch]


def counts_in_every_order(batch, collate=None) -> set:
    return {count_samples(variant, collate) for variant in key_orders(batch)}


class Graphs:
    """A graph batch object that says how many graphs it holds (PyTorch Geometric's ``Batch``)."""

    def __init__(self, graphs: int) -> None:
        self.num_graphs = graphs
        self.x = zeros(10 * graphs, 4)


@dataclasses.dataclass
class SizedBatch:
    """A batch object that names its own size beside packed rows."""

    tokens: torch.Tensor
    batch_size: int


def records(n: int) -> list[dict]:
    return [{"boxes": zeros(1 + i % 3, 4)} for i in range(n)]


# --------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("batch, samples", [
    # The fault: 24 or 4 by the order of the keys.
    ({"targets": {"y": zeros(B * T)}, "inputs": {"x": zeros(B, T, 3)}}, None),
    # One level apart: the shallower one counted (24 for 4; 4 by chance).
    ({"inputs": {"x": zeros(B, T, 3)}, "y": zeros(B * T)}, None),
    (({"x": zeros(B, T, 3)}, zeros(B * T)), None),
    ((zeros(B, T, 3), {"y": zeros(B * T)}), None),
    # A per-batch (1,) tensor beside a nested batch: 1, 6, or nothing, by order and depth.
    ({"inputs": {"x": zeros(6, 3)}, "w": zeros(1)}, None),
    ({"inputs": {"x": zeros(6, 3)}, "meta": {"temperature": zeros(1)}}, None),
    # ... or beside a list of records: 1 where it came first (the fast path), else nothing.
    ({"w": zeros(1), "targets": records(3)}, None),
    # Two inputs of one name that disagree (queries beside their documents): the first one's.
    ({"query": {"input_ids": zeros(B, 9)}, "docs": {"input_ids": zeros(3 * B, 9)}}, None),
    # Certain counts of other kinds side by side: a graph batch's graphs beside per-node labels.
    ({"graphs": Graphs(B), "node_labels": zeros(10 * B)}, None),
    # A list of records after the count it contradicts was not read (5 labels, 3 targets).
    ({"y": zeros(5), "targets": records(3)}, None),
    # Names of another length one level down (3 rows, 2 names): as at the top.
    ({"inputs": {"x": zeros(3, 2)}, "meta": {"names": ["a", "b"]}}, None),
    # A model's named input, or images, decide at any depth, as at the top.
    ({"targets": {"labels": zeros(B * T)}, "inputs": {"input_ids": zeros(B, T), "attention_mask": zeros(B, T)}}, B),
    ({"labels": zeros(B * T), "inputs": {"input_ids": zeros(B, T)}}, B),
    (({"input_ids": zeros(B, T)}, zeros(B * T)), B),
    ({"targets": {"boxes": zeros(9, 4), "labels": zeros(9)}, "inputs": {"images": zeros(B, 3, 8, 8)}}, B),
], ids=["brief's batch", "targets one level up", "(inputs, flat targets)", "(x, {flat targets})",
        "(1,) beside nested inputs", "(1,) nested beside nested inputs", "(1,) beside records",
        "queries and documents", "graphs beside node labels", "labels beside records", "names nested",
        "named input nested",
        "named input one level down", "named input in a tuple", "images nested"])
@pytest.mark.parametrize("collate", [None, "rows"])
def test_fields_that_disagree_at_any_depth_count_alike_in_every_key_order(batch, samples, collate):
    assert counts_in_every_order(batch, collate) == {samples}


def test_the_warning_says_which_leading_dimensions_differ_one_level_down():
    for batch in key_orders({"targets": {"y": zeros(B * T)}, "inputs": {"x": zeros(B, T, 3)}}):
        (message,) = warnings_for(batch)
        assert "leading dimensions differ: 4, 24" in message and "flattened" in message
    (message,) = warnings_for({"inputs": {"x": zeros(6, 3)}, "w": zeros(1)})
    assert "leading dimensions differ: 1, 6" in message and "(1,) tensor is a per-batch field" in message


@pytest.mark.parametrize("batch, samples", [
    ({"inputs": {"x": zeros(B, T, 3)}, "targets": {"y": zeros(B, T)}}, B),
    ({"meta": {"temperature": zeros(1)}, "inputs": {"x": zeros(1, 3)}}, 1),  # a batch of one
    ({"inputs": {"x": zeros(3, 2)}, "meta": {"names": ["a", "b", "c"]}}, 3),
    ({"inputs": {"images": zeros(2, 3, 8, 8)}, "targets": records(2)}, 2),
    ({"features": [{"input_ids": zeros(16, 7)}, {"input_ids": zeros(16, 7)}], "labels": zeros(16)}, 16),
    ((zeros(B, 3), {"a": zeros(B), "b": {"c": zeros(B, 2)}}, [str(i) for i in range(B)]), B),
    ({"x": zeros(B, 3), "y": zeros(B), "task": 2, "name": "train"}, B),
    # Guards: the top level's rule, unchanged (data (T, B) beside targets (T * B,): neither is
    # sure); a batch object's own size still wins over its fields.
    ({"data": zeros(35, 20), "target": zeros(700)}, None),
    ({"batch": SizedBatch(zeros(30, 3), 4)}, 4),
], ids=["agreeing", "(1,) beside a batch of one", "names", "images and targets",
        "per-input batches", "nested in a tuple", "scalars beside", "sequence-first", "batch object"])
def test_nested_batches_count_as_before_in_every_key_order(batch, samples):
    assert counts_in_every_order(batch) == {samples}
    assert counts_in_every_order(batch, "rows") == {samples}


def test_a_per_batch_tensor_beside_records_stays_uncounted():
    """A (1,) tensor beside a list of n records: n samples beside a per-batch weight, or one
    sample passed through as it is (``collate_fn=lambda b: b[0]``), its id beside a record per
    object it shows. Nothing in the batch says which: "a (1,) tensor is a per-batch scalar"
    would count the objects. (It counted 1 where the tensor came first: right here, wrong for
    the weight.)"""
    one_image = {"image_id": torch.tensor([7]), "annotations": [{"bbox": [0, 0, 4, 4], "category_id": 1}] * 3}
    assert counts_in_every_order(one_image) == {None}
    assert counts_in_every_order({"w": zeros(1), "targets": records(1)}) == {1}  # a batch of one


# ------------------------------------------------------- every dict layout of the samples tests
def _parametrized_batches():
    """(test, batch, expected or None) for each parametrized ``batch`` of tests/test_samples*.py."""
    found = []
    for path in sorted(Path(__file__).parent.glob("test_samples*.py")):
        try:
            module = importlib.import_module(f"tests.{path.stem}")
        except pytest.skip.Exception:  # a framework it needs at import is missing here
            continue
        for name, test in vars(module).items():
            for mark in getattr(test, "pytestmark", []) if name.startswith("test_") else []:
                if mark.name != "parametrize":
                    continue
                names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else list(mark.args[0])
                if "batch" not in names:
                    continue
                for values in mark.args[1]:
                    values = getattr(values, "values", values)  # pytest.param(...)
                    values = values if len(names) > 1 else (values,)
                    row = dict(zip(names, values))
                    batch = row["batch"]
                    if isinstance(batch, types.FunctionType) and len(inspect.signature(batch).parameters) == 1:
                        batch = batch(16)  # a batch of any size
                    found.append((f"{path.stem}::{name}", batch, row.get("samples", row.get("expected"))))
    return found


def _has_dict(item, depth: int = 0) -> bool:
    if isinstance(item, Mapping):
        return True
    if depth < 8 and isinstance(item, (list, tuple)):
        return any(_has_dict(x, depth + 1) for x in item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return any(_has_dict(getattr(item, f.name), depth + 1) for f in dataclasses.fields(item))
    return False


def test_every_dict_layout_of_the_samples_tests_counts_alike_in_every_key_order():
    layouts = [(test, batch, expected) for test, batch, expected in _parametrized_batches() if _has_dict(batch)]
    assert len(layouts) >= 30, len(layouts)  # the checker reads them (a renamed argument would drop them)
    for test, batch, expected in layouts:
        for collate in (None, "rows"):
            counts = counts_in_every_order(batch, collate)
            assert len(counts) == 1, (test, collate, counts)
            if collate is None and type(expected) is int:
                assert counts == {expected}, (test, counts)


# ------------------------------------------------------------------------- the real loops
TRAIN, VAL, BATCH = 23, 11, 5  # last batches of 3 and 1


def flat_targets(order: str):
    """A collate: inputs (b, T, 3) beside targets flattened to (b * T,), in a nested dict."""
    def collate(items):
        b = len(items)
        inputs, targets = {"x": zeros(b, T, 3)}, {"y": zeros(b * T)}
        return {"inputs": inputs, "targets": targets} if order == "inputs first" else {"targets": targets, "inputs": inputs}
    return collate


def named_ids(order: str):
    """A collate: a model's named input (b, T) in a nested dict beside labels flattened to (b * T,)."""
    def collate(items):
        b = len(items)
        inputs, labels = {"input_ids": torch.ones(b, T, dtype=torch.long)}, torch.zeros(b * T, dtype=torch.long)
        return {"inputs": inputs, "labels": labels} if order == "inputs first" else {"labels": labels, "inputs": inputs}
    return collate


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("order", ["inputs first", "targets first"])
@pytest.mark.parametrize("layout, counted", [(flat_targets, False), (named_ids, True)], ids=["x", "input_ids"])
def test_lightning_fit_records_nested_disagreeing_fields_alike_in_either_order(tmp_path, layout, counted, order):
    from torch.utils.data import DataLoader

    from tests.test_samples_frameworks import lightning_module

    L, AnyBatch = lightning_module()  # (skips without Lightning)
    from greencallbacks.lightning import EnergyCallback

    def loader(n, offset=0):
        return DataLoader(range(offset, offset + n), batch_size=BATCH, collate_fn=layout(order))

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[callback], num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(AnyBatch(), loader(TRAIN), loader(VAL, offset=100))
    records = read_records(tmp_path)
    counting = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "count the samples" in str(w.message)]
    train = [(r.samples, r.samples_counted) for r in records if r.phase == "train"]
    validation = [(r.samples, r.samples_counted) for r in records if r.phase == "validation"]
    if counted:
        # Was 138 and 66 (T a sample), as exact.
        assert (train, validation) == ([(TRAIN, True)], [(VAL, True)])
        assert not counting
    else:
        # Was 138 and 66 as exact with the targets first; with the inputs first 23, and the
        # validation uncounted by its last batch of one alone.
        assert [c for _, c in train + validation] == [False, False]
        assert all(r.energy_j_per_sample is None for r in records)
        (message,) = counting
        assert "leading dimensions differ" in message


@pytest.mark.parametrize("order", ["inputs first", "labels first"])
def test_hf_trainer_counts_a_nested_named_input_beside_flattened_labels(tmp_path, order):
    pytest.importorskip("transformers")
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import SEQ_LEN, TokenDataset, tiny_model, training_args

    model = tiny_model()
    forward = model.forward

    def nested_forward(inputs=None, labels=None):
        rows = len(inputs["input_ids"])
        return forward(**inputs, labels=labels.view(rows, SEQ_LEN)[:, 0])  # one label a sequence

    model.forward = nested_forward

    def collate(items):
        inputs = {key: torch.stack([item[key] for item in items]) for key in ("input_ids", "attention_mask")}
        labels = torch.stack([item["labels"] for item in items]).repeat_interleave(SEQ_LEN)  # per token, flattened
        return {"inputs": inputs, "labels": labels} if order == "inputs first" else {"labels": labels, "inputs": inputs}

    trainer = Trainer(model=model, args=training_args(tmp_path / "out", num_train_epochs=1, per_device_train_batch_size=BATCH,
                                                       per_device_eval_batch_size=BATCH, remove_unused_columns=False),
                      train_dataset=TokenDataset(TRAIN), eval_dataset=TokenDataset(VAL, seed=1), data_collator=collate,
                      callbacks=[EnergyCallback(intensity=100.0)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    records = read_records(tmp_path / "out")
    # Was 184 for 23 (SEQ_LEN a sample), as exact.
    assert [(r.samples, r.samples_counted) for r in records if r.phase == "train"] == [(TRAIN, True)]
    assert [(r.samples, r.samples_counted) for r in records if r.phase == "validation"] == [(VAL, True)]
    assert not [w for w in caught if issubclass(w.category, EnergyWarning) and "count the samples" in str(w.message)]


# ------------------------------------------------- a model's named input where it decides wrong
class PackedRow(NamedTuple):
    """A padding-free packed row (transformers' DataCollatorWithFlattening with
    ``return_flash_attn_kwargs=True``) as a named tuple's fields."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    cu_seq_lens_q: torch.Tensor


@dataclasses.dataclass
class PackedBatch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    cu_seq_lens_q: torch.Tensor


def _packed(lengths=(5, 3, 4)) -> dict:
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    tokens = torch.ones(1, sum(lengths), dtype=torch.long)
    return {"input_ids": tokens, "position_ids": positions, "labels": tokens, "cu_seq_lens_q": offsets}


@pytest.mark.parametrize("make", [lambda row: PackedRow(**row), lambda row: PackedBatch(**row),
                                  lambda row: {"inputs": {k: row[k] for k in ("input_ids", "position_ids", "cu_seq_lens_q")},
                                               "labels": row["labels"]}],
                         ids=["named tuple", "dataclass", "nested mapping"])
def test_a_packed_row_beside_its_offsets_outside_a_mapping_counts_its_sequences(make):
    # The named input_ids (1, 12) beside cu_seq_lens_q (4,) counted 1 for 3 sequences, as exact
    # (a named tuple or dataclass was uncounted before the rule ran at every depth).
    assert counts_in_every_order(make(_packed())) == {3}
    # Guard: a batch of one, its labels flattened beside it, is one sample.
    one = {"input_ids": torch.ones(1, 6, dtype=torch.long), "position_ids": torch.arange(6).unsqueeze(0),
           "labels": torch.zeros(6), "cu_seq_lens_q": torch.tensor([0, 6])}
    assert counts_in_every_order(make(one)) == {1}


def test_class_prompts_beside_a_batch_of_images_are_no_samples():
    """(images (B, 3, H, W), labels (B,), {"input_ids": (C, T)}): a zero-shot or open-vocabulary
    batch carries its C class prompts tokenized once. The prompts' named input_ids counted C for
    B images, as exact (B before the rule ran at every depth); either may be the samples."""
    prompts = {"input_ids": torch.ones(10, T, dtype=torch.long), "attention_mask": torch.ones(10, T, dtype=torch.long)}
    for batch in [(zeros(8, 3, 16, 16), zeros(8), prompts), {"images": zeros(8, 3, 16, 16), "labels": zeros(8), "text": prompts}]:
        assert counts_in_every_order(batch) == {None}
    # Guards: a model's images (pixel_values) of other rows than input_ids, several a sample
    # (LLaVA's, Gemma 3's); images agreeing with the prompts' rows.
    assert count_samples({"input_ids": torch.ones(2, T, dtype=torch.long), "pixel_values": zeros(5, 3, 16, 16)}) == 2
    assert count_samples((zeros(10, 3, 16, 16), prompts)) == 10
