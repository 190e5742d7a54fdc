"""Counting the samples in a batch (every kind of batch the adapters see), and the per-run warning."""

from __future__ import annotations

import warnings
from collections import UserDict

import numpy as np
import pytest

from greencallbacks.meter import EnergyWarning
from greencallbacks.samples import BatchCounter, count_collated, count_samples
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


def packed(lengths, start=0, pad=0):
    """A padding-free collator's batch: the sequences in one row, positions starting again at each."""
    positions = [start + i for n in lengths for i in range(n)] + [0] * pad
    return {"input_ids": torch.ones(1, len(positions), dtype=torch.long), "labels": torch.ones(1, len(positions)),
            "position_ids": torch.tensor([positions])}


class EncodingLike(UserDict):
    """A Mapping that is not a dict, as HF's ``BatchEncoding`` (without importing transformers here)."""


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
    ("list of per-sample dicts", [{"ids": torch.zeros(n)} for n in (3, 3, 5, 1)], 4),
    ("[inputs, targets] dicts are fields", [{"x": torch.zeros(6, 2)}, {"y": torch.zeros(6)}], 6),
    ("list of per-sample tuples", [(torch.zeros(3), 1) for _ in range(5)], 5),
    # A batch of one from collate_fn=list (batch_size=1, or a last batch of one): a sample, not its fields.
    ("list of one per-sample dict", [{"x": torch.zeros(4), "y": torch.zeros(1)}], 1),
    ("list of one dict of scalars", [{"text": "hi", "label": 1}], 1),
    ("list of one per-sample tuple", [(torch.zeros(4), torch.zeros(1))], 1),
    ("list of one dataclass", [Features(torch.zeros(3, 2, 2), torch.zeros(1))], 1),
    ("[x] of one collated tensor is fields", [torch.zeros(6, 2)], 6),
    ("[[x, y]] of collated lists is fields", [[torch.zeros(6, 2), torch.zeros(6)]], 6),
    # Padding-free packing (DataCollatorWithFlattening, TRL padding_free): one row, its sequences.
    ("packed row: position_ids restart", packed([3, 2, 1, 1]), 4),
    ("packed row: positions from 2 (RoBERTa)", packed([3, 2, 1], start=2), 3),
    ("packed row: padding masked out", {**packed([3, 2], pad=3), "attention_mask": torch.tensor([[1] * 5 + [0] * 3])}, 2),
    ("packed row: cu_seq_lens_q's shape", {"input_ids": torch.zeros(1, 6, dtype=torch.long),
                                            "cu_seq_lens_q": torch.tensor([0, 3, 5, 6])}, 3),
    ("packed row: a scalar first", {"max_length_q": 3, **packed([3, 2])}, 2),
    ("packed row: a BatchEncoding", EncodingLike(packed([1, 1, 1])), 3),
    ("batch of one with its positions", {"input_ids": torch.zeros(1, 5), "position_ids": torch.arange(5)[None]}, 1),
    ("batch of one", {"input_ids": torch.zeros(1, 5), "attention_mask": torch.ones(1, 5)}, 1),
    ("batch of one, one token, position 0", {"input_ids": torch.zeros(1, 1), "position_ids": torch.zeros(1, 1)}, 1),
    ("batch of positions that are not a row", {"input_ids": torch.zeros(2, 5), "position_ids": torch.zeros(2, 5)}, 2),
    ("detection: tuple(zip(*samples))", (tuple(torch.zeros(3, 8, 8) for _ in range(5)),
                                         tuple({"boxes": torch.zeros(2, 4)} for _ in range(5))), 5),
    # Images of different sizes agree on their leading dimension (channels) as per-input fields do:
    # the targets or labels beside them say they are samples.
    ("detection, images of different sizes", (tuple(torch.zeros(3, 8 + i, 8) for i in range(4)),
                                              tuple({"boxes": torch.zeros(2, 4)} for _ in range(4))), 4),
    ("images of different sizes, labels", [[torch.zeros(3, 8 + i, 8) for i in range(4)], torch.zeros(4)], 4),
    # Several inputs of one batch (a multi-input model): they agree on the leading dimension, 8.
    ("((x_a, x_b), y)", ((torch.zeros(8, 4), torch.zeros(8, 10)), torch.zeros(8, 1)), 8),
    ("[[x_a, x_b], y]", [[torch.zeros(8, 4), torch.zeros(8, 10)], torch.zeros(8, 1)], 8),
    ('{"inputs": [x_a, x_b], "y": y}', {"inputs": [torch.zeros(8, 4), torch.zeros(8, 10)], "y": torch.zeros(8)}, 8),
    ("nested outputs [[o1, o2], o3]", [[torch.zeros(23, 4), torch.zeros(23, 2)], torch.zeros(23, 1)], 23),
    ("two inputs, a batch of two: both readings agree", {"inputs": [torch.zeros(2, 4), torch.zeros(2, 10)]}, 2),
    # A 0-d tensor first in a list: a field without a batch dimension, not one of the list's samples.
    ("[0-d tensor, x, y]", [torch.tensor(1.0), torch.zeros(4, 4), torch.zeros(4, 1)], 4),
    ("[0-d int tensor, x]", [torch.tensor(7), torch.zeros(32, 10)], 32),
    ("nested tensor (strided)", torch.nested.nested_tensor([torch.zeros(5, 3), torch.zeros(2, 3), torch.zeros(1, 3)]), 3),
    ("nested tensor (jagged)", torch.nested.nested_tensor([torch.zeros(5, 3), torch.zeros(2, 3)], layout=torch.jagged), 2),
    ("(nested tensor, labels)", (torch.nested.nested_tensor([torch.zeros(5, 3), torch.zeros(2, 3)]), torch.zeros(2)), 2),
    ("nested tensor in a dict", {"x": torch.nested.nested_tensor([torch.zeros(4), torch.zeros(1)])}, 2),
    # Fields that disagree on their leading dimension: a model's named input decides, or nothing does.
    ("a VLM's patches beside its input_ids", {"input_ids": torch.zeros(2, 9), "pixel_values": torch.zeros(40, 8),
                                              "image_grid_thw": torch.zeros(3, 3)}, 2),
    ("input_ids after other fields", {"image_grid_thw": torch.zeros(3, 3), "input_ids": torch.zeros(2, 9)}, 2),
    ("a PackedSequence of 4 sequences", torch.nn.utils.rnn.pack_sequence(
        [torch.zeros(n, 3) for n in (5, 3, 2, 1)]), 4),
    ("(PackedSequence, labels)", (torch.nn.utils.rnn.pack_sequence([torch.zeros(n, 3) for n in (4, 2)]), torch.zeros(2)), 2),
    ("token-id lists (collate_fn=list)", [[1, 2, 3, 4, 5], [6, 7], [8], [9, 9]], 4),
    ("token-id lists of one length", [[1, 2, 3], [4, 5, 6]], 2),
    ("objects of one class with __len__", [SizedBatch(9), SizedBatch(3), SizedBatch(1), SizedBatch(2)], 4),
    # Lists of texts are fields, as before: [sources, targets], [texts, labels].
    ("[sources, targets] as lists of texts", [["a b", "c", "d", "e"], ["w", "x", "y", "z"]], 4),
    ("[texts, labels]", [["a", "b", "c", "d"], [0, 1, 0, 1]], 4),
    # Fields that disagree, images among them: the images are the samples (YOLO-style collates).
    ("(images, all boxes, paths)", (torch.zeros(4, 3, 8, 8), torch.zeros(11, 6), ("a", "b", "c", "d")), 4),
    ("{img, cls, bboxes, batch_idx}", {"img": torch.zeros(4, 3, 8, 8), "cls": torch.zeros(11, 1),
                                       "bboxes": torch.zeros(11, 4), "batch_idx": torch.zeros(11)}, 4),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.nested's prototype warning
@pytest.mark.parametrize("batch, samples", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_count_samples(batch, samples):
    assert count_samples(batch) == samples


def _default_collated(samples: list):
    return torch.utils.data.default_collate(samples)


# Batches from torch's default_collate itself, counted with the DataLoader's word that it made them.
COLLATED = [
    ("(source, target) text pairs", [("a b", "c"), ("d", "e f"), ("g", "h")], 3, 2),
    ("1-tuples of dicts", [({"x": torch.zeros(2)},), ({"x": torch.ones(2)},)], 2, 1),
    ("text pairs beside a label", [("a", "b", 0), ("c", "d", 1), ("e", "f", 2), ("g", "h", 3)], 4, 4),
    ("(x, y) tensors", [(torch.zeros(3), torch.tensor(1.0))] * 5, 5, 5),
    ("texts", ["a", "b", "c"], 3, 3),
    ("dicts of tensors and texts", [{"x": torch.zeros(2), "text": "a"}] * 4, 4, 4),
    ("token-id lists of one length", [[1, 2, 3], [4, 5, 6]], 2, 2),  # collated per position: 3 tensors of 2
    ("nested tuples of texts", [(("a", "b"), torch.zeros(2))] * 3, 3, 3),  # the tensor says which reading
]


@pytest.mark.parametrize("samples, expected, without_the_word", [c[1:] for c in COLLATED], ids=[c[0] for c in COLLATED])
def test_count_collated_reads_lists_as_fields(samples, expected, without_the_word):
    batch = _default_collated(samples)
    assert count_collated(batch) == expected
    assert count_samples(batch) == without_the_word  # what the batch alone reads as


def test_a_batch_collate_fn_list_made_counts_its_items_where_the_loader_says_so():
    vectors = [torch.zeros(4), torch.zeros(4)]  # two samples, or fields [x, y] of a batch of 4
    assert count_samples(vectors) == 4
    assert count_samples(vectors, collate="list") == 2
    assert count_samples(torch.zeros(3, 4), collate="list") == 3  # a tensor stays a tensor


@pytest.mark.parametrize("collate", ["rows", "default"])
def test_a_row_from_a_collator_known_to_pack_nothing_is_one_sample(collate):
    # Pre-packed rows (documents end to end, position_ids restarting): a batch of two counts 2, so
    # a batch of one counts 1, not its documents, where the collator is known; unknown, as before.
    row = packed([3, 2, 1])
    two_rows = {key: torch.cat([value, value]) for key, value in row.items()}
    assert count_samples(two_rows, collate=collate) == 2
    assert count_samples(row, collate=collate) == 1
    assert count_samples(EncodingLike(row), collate=collate) == 1
    assert count_samples({"max_length_q": 3, **row}, collate=collate) == 1
    assert count_samples(row) == 3


def test_count_collated_keeps_the_general_rules_elsewhere():
    assert count_collated(torch.zeros(7, 2)) == 7
    assert count_collated({"input_ids": torch.zeros(3, 4)}) == 3
    assert count_collated([torch.zeros(30, 2), torch.zeros(10)]) is None  # packed tokens beside lengths
    assert count_collated([torch.zeros(4, 3, 8, 8), torch.zeros(11, 6)]) == 4  # images beside all boxes
    assert count_collated([]) is None


@pytest.mark.parametrize("batch", [None, (), [], {}, torch.tensor(2.0), 3, "abc", object(), {"meta": "x"}],
                         ids=["None", "()", "[]", "{}", "0-d tensor", "int", "str", "object", "no tensor"])
def test_a_batch_that_says_nothing_is_uncounted_not_zero(batch):
    assert count_samples(batch) is None


@pytest.mark.parametrize("batch", [
    [torch.zeros(3, 4), torch.zeros(12)],  # labels flattened to (B * T,)
    (torch.zeros(7, 10, 3), torch.zeros(10)),  # sequence-first (T, B, F) beside its labels
    {"x": torch.zeros(30, 3), "lengths": torch.zeros(10)},  # packed tokens beside per-sequence lengths
    {"node_x": torch.zeros(17, 3), "batch": torch.zeros(17), "y": torch.zeros(4)},  # graph nodes, graph labels
    {"input_ids": torch.zeros(107), "lengths": torch.zeros(22), "labels": torch.zeros(107)},  # 1-d packed ids
    Pair(torch.zeros(30, 2), torch.zeros(10)),
    (torch.zeros(32, 16), torch.zeros(10, 16)),  # a tuple is fields, never ragged samples
    Features(torch.zeros(30, 3), torch.zeros(10)),
], ids=["flattened labels", "sequence-first", "packed tokens", "graph", "1-d input_ids", "named tuple", "tuple",
                             "dataclass"])
def test_fields_that_disagree_on_their_leading_dimension_are_uncounted_not_the_first_ones(batch):
    # The first field's dimension was taken (30 for 10 sequences, 7 time steps for 10 samples),
    # counted and silent: a per-sample cost off by the sequence length. Now the warning says why.
    assert count_samples(batch) is None
    with pytest.warns(EnergyWarning, match="leading dimensions differ"):
        BatchCounter().count(batch, run_id="r")


@pytest.mark.parametrize("batch", [
    (tuple(torch.zeros(3, 8 + i, 8) for i in range(4)),),  # 4 images of 3 channels, or inputs of 3?
    {"inputs": [torch.zeros(8, 4), torch.zeros(8, 10)]},  # 2 images of 8 channels, or inputs of 8?
    ((torch.zeros(8, 4), torch.zeros(8, 10)), torch.zeros(5)),  # labels giving neither reading
], ids=["images alone", "inputs alone", "neither reading"])
def test_a_list_of_tensors_agreeing_only_on_their_leading_dimension_is_uncounted_where_nothing_says_which(batch):
    # Per-input fields were taken for ragged samples (2 for a batch of 8), counted and silent;
    # without a field that says which, it is uncounted, and the warning says why.
    assert count_samples(batch) is None
    with pytest.warns(EnergyWarning, match="agrees on their leading dimension but not on their shapes"):
        BatchCounter().count(batch, run_id="r")


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


def test_padding_free_collator_batches_count_their_sequences():
    transformers = pytest.importorskip("transformers")
    import inspect

    lengths = [3, 1, 4, 1, 5, 2]
    features = [{"input_ids": list(range(1, n + 1))} for n in lengths]
    options = [{}, {"return_tensors": "np"}]
    parameters = inspect.signature(transformers.DataCollatorWithFlattening).parameters
    if "return_flash_attn_kwargs" in parameters:  # transformers >= 4.50 or so
        options += [{"return_flash_attn_kwargs": True}, {"return_flash_attn_kwargs": True, "return_position_ids": False}]
    if "position_ids_start" in parameters:
        options.append({"position_ids_start": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the collator warns that it flattens the batch
        for kwargs in options:
            batch = transformers.DataCollatorWithFlattening(**kwargs)(features)
            assert count_samples(batch) == len(lengths), kwargs
            assert count_samples(transformers.DataCollatorWithFlattening(**kwargs)(features[:1])) == 1, kwargs


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


class DeviceTensor:
    """A tensor on a GPU, as far as the counter can tell: any read of its values is recorded."""

    def __init__(self, shape, reads):
        self.shape, self.device, self.reads = torch.Size(shape), torch.device("cuda", 0), reads

    def __getattr__(self, name):
        if name in ("sum", "item", "tolist", "cpu", "numpy", "__array__", "to", "nonzero", "any", "all", "eq"):
            self.reads.append(name)
            raise AssertionError(f"read {name} on the device")
        raise AttributeError(name)

    def __eq__(self, other):
        self.reads.append("==")
        raise AssertionError("compared on the device")

    __getitem__ = __eq__


def test_a_packed_row_on_a_device_is_uncounted_without_a_read_and_says_why():
    reads = []
    batch = {"input_ids": DeviceTensor((1, 9), reads), "labels": DeviceTensor((1, 9), reads),
             "position_ids": DeviceTensor((1, 9), reads)}
    assert count_samples(batch) is None and reads == []
    # FlashAttention's offsets give the count by their shape alone, on any device.
    assert count_samples({**batch, "cu_seq_lens_q": DeviceTensor((4,), reads)}) == 3 and reads == []
    tracker = FakeTracker()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = BatchCounter()
        for _ in range(3):
            counter.add(tracker, batch)
    assert tracker.calls == [(None, 0)] * 3 and reads == []
    (message,) = energy_warnings(caught)
    assert "packed into one row, on cuda:0" in message and "cu_seq_lens_q" in message and "sample_counter=" in message
