"""Counting the samples in a batch (every kind of batch the adapters see), and the per-run warning."""

from __future__ import annotations

import warnings
from collections import UserDict

import numpy as np
import pytest

from greencallbacks.meter import EnergyWarning
from greencallbacks.samples import BatchCounter, count_samples
from tests.batch_kinds import Features, Pair

torch = pytest.importorskip("torch")


class GraphBatch:
    """Like PyTorch Geometric's ``Batch``: ``num_graphs`` samples, whatever ``len()`` says (its attribute count)."""

    def __init__(self, graphs: int, nodes: int) -> None:
        self.num_graphs = graphs
        self.x = torch.zeros(nodes, 3)  # nodes of all graphs: not the sample count
        self.batch = torch.zeros(nodes, dtype=torch.long)

    def __len__(self) -> int:
        return 3


class SizedBatch:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class DglLikeGraph:
    batch_size = 6


class TensorDictLike:
    batch_size = torch.Size([4])


def ragged(lengths):
    return [torch.zeros(n, 4) for n in lengths]


CASES = [
    ("tensor", torch.zeros(7, 3), 7),
    ("tuple (x, y)", (torch.zeros(5, 3), torch.zeros(5)), 5),
    ("list [x, y] (default_collate)", [torch.zeros(4, 3), torch.zeros(4)], 4),
    ("numpy array", np.zeros((6, 2)), 6),
    ("dict of tensors", {"input_ids": torch.zeros(3, 16), "labels": torch.zeros(3)}, 3),
    ("Mapping that is not a dict", UserDict({"input_ids": torch.zeros(9, 16)}), 9),
    ("nested dict, tensor not first", {"meta": "x", "inputs": {"ids": [torch.zeros(2, 4)]}}, 2),
    ("0-d tensor first", (torch.tensor(1.0), torch.zeros(8, 2)), 8),
    ("list of labels", [3, 1, 2], 3),
    ("list of strings", ["a", "b"], 2),
    ("strings inside a dict", {"text": ["a", "b", "c"], "id": 7}, 3),
    ("dataclass", Features(torch.zeros(11, 3, 2, 2), torch.zeros(11)), 11),
    ("named tuple", Pair(torch.zeros(5, 1), torch.zeros(5)), 5),
    ("graph batch (num_graphs)", GraphBatch(graphs=4, nodes=37), 4),
    ("object with batch_size", DglLikeGraph(), 6),
    ("object with a batch_size shape (TensorDict)", TensorDictLike(), 4),
    ("object with __len__", SizedBatch(12), 12),
    ("ragged list (collate_fn=list)", ragged([5, 7, 2]), 3),
    ("ragged list of two (a partial last batch)", ragged([5, 2]), 2),
    ("(x, y) with flattened labels is fields", [torch.zeros(3, 4), torch.zeros(12)], 3),
    ("list of per-sample dicts", [{"ids": torch.zeros(n)} for n in (3, 3, 5, 1)], 4),
    ("[inputs, targets] dicts are fields", [{"x": torch.zeros(6, 2)}, {"y": torch.zeros(6)}], 6),
    ("list of per-sample tuples", [(torch.zeros(3), 1) for _ in range(5)], 5),
    ("detection: tuple(zip(*samples))", (tuple(torch.zeros(3, 8, 8) for _ in range(5)),
                                         tuple({"boxes": torch.zeros(2, 4)} for _ in range(5))), 5),
    ("detection, images of different sizes", (tuple(torch.zeros(3, 8 + i, 8) for i in range(4)),), 4),
    ("nested tensor (strided)", torch.nested.nested_tensor([torch.zeros(5, 3), torch.zeros(2, 3), torch.zeros(1, 3)]), 3),
    ("nested tensor (jagged)", torch.nested.nested_tensor([torch.zeros(5, 3), torch.zeros(2, 3)], layout=torch.jagged), 2),
    ("(nested tensor, labels)", (torch.nested.nested_tensor([torch.zeros(5, 3), torch.zeros(2, 3)]), torch.zeros(2)), 2),
    ("nested tensor in a dict", {"x": torch.nested.nested_tensor([torch.zeros(4), torch.zeros(1)])}, 2),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.nested's prototype warning
@pytest.mark.parametrize("batch, samples", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_count_samples(batch, samples):
    assert count_samples(batch) == samples


@pytest.mark.parametrize("batch", [None, (), [], {}, torch.tensor(2.0), 3, "abc", object(), {"meta": "x"}],
                         ids=["None", "()", "[]", "{}", "0-d tensor", "int", "str", "object", "no tensor"])
def test_a_batch_that_says_nothing_is_uncounted_not_zero(batch):
    assert count_samples(batch) is None


def tiny_tokenizer(words=("a", "b", "c", "d")):
    """A word-level fast tokenizer built in memory: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def test_hf_batch_encoding_from_a_data_collator():
    transformers = pytest.importorskip("transformers")
    tokenizer = tiny_tokenizer()
    collator = transformers.DataCollatorWithPadding(tokenizer)
    texts = ["a b c", "d", "b c", "a a a a b", "c"]
    features = [tokenizer(t) for t in texts]
    batch = collator(features)
    assert type(batch).__name__ == "BatchEncoding"
    assert count_samples(batch) == len(texts)
    assert count_samples(transformers.default_data_collator([{"x": [1, 2], "label": 0}] * 3)) == 3


def test_tensorflow_and_jax_arrays_count_by_their_leading_dimension():
    tf = pytest.importorskip("tensorflow")
    assert count_samples(tf.zeros((5, 2))) == 5
    assert count_samples({"x": tf.ragged.constant([[1, 2], [3], [4, 5, 6]])}) == 3
    jnp = pytest.importorskip("jax.numpy")
    assert count_samples((jnp.zeros((4, 2)), jnp.zeros(4))) == 4


# ------------------------------------------------------------------------------ BatchCounter
class FakeTracker:
    def __init__(self, run_id="run-a"):
        self.run_id = run_id
        self.calls = []

    def add_samples(self, samples, tokens=0):
        self.calls.append((samples, tokens))


def energy_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]


def test_an_uncountable_batch_is_added_as_none_with_one_warning_per_run():
    counter = BatchCounter()
    tracker = FakeTracker("run-a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            counter.add(tracker, object())
        counter.add(tracker, torch.zeros(4, 2))
        counter.add(FakeTracker("run-b"), object())  # a new run warns again
    assert tracker.calls == [(None, 0)] * 3 + [(4, 0)]
    messages = energy_warnings(caught)
    assert len(messages) == 2
    assert "builtins.object" in messages[0] and "sample_counter=" in messages[0]


def test_user_counters_and_their_failures():
    tracker = FakeTracker()
    counter = BatchCounter(sample_counter=lambda b: b["n"], token_counter=lambda b: b["mask"].sum())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter.add(tracker, {"n": 3, "mask": torch.tensor([1, 1, 0])})  # a 0-d tensor count is fine
        counter.add(tracker, {"n": -1, "mask": torch.tensor([1])})  # nonsense: uncounted
        counter.add(tracker, {"mask": torch.tensor([1])})  # raises: uncounted
    assert tracker.calls == [(3, 2), (None, 1), (None, 1)]
    messages = energy_warnings(caught)
    assert len(messages) == 1 and "sample_counter returned -1" in messages[0]


@pytest.mark.parametrize("name", ["sample_counter", "token_counter"])
def test_a_counter_that_is_not_a_function_fails_at_construction(name):
    with pytest.raises(ValueError, match=name):
        BatchCounter(**{name: 3})
