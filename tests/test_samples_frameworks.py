"""Every sample counted, or a clear word why not: each batch kind through the real frameworks.

Each test trains, validates, tests and predicts on data sets whose sizes leave a partial last
batch, and compares each record's ``samples`` with the data set's length (computed from the data,
not from the counter). A batch nothing can count gives ``samples_counted: false``, one warning per
run, and no per-sample values in the records or the loggers.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.batch_kinds import Features, Pair  # noqa: E402

pytestmark = pytest.mark.slow

TRAIN, VAL, TEST, PREDICT, BATCH = 23, 11, 7, 9, 5  # every split ends with a partial batch
WORDS = ("a", "b", "c", "d")


# ---------------------------------------------------------------------------- batch kinds
class GraphBatch:
    """A stand-in for PyTorch Geometric's ``Batch``: many nodes, ``num_graphs`` samples, ``len()`` its attributes."""

    def __init__(self, graphs: list[torch.Tensor]) -> None:
        self.x = torch.cat(graphs)
        self.batch = torch.cat([torch.full((len(g),), i) for i, g in enumerate(graphs)])
        self.num_graphs = len(graphs)

    def __len__(self) -> int:
        return 2


class Opaque:
    """A batch nothing can count."""


def _tokens(i: int) -> list[int]:
    return [2 + (i + k) % len(WORDS) for k in range(1 + i % 4)]  # 1..4 tokens: ragged


def _texts(indices):
    return [" ".join(WORDS[t - 2] for t in _tokens(i)) for i in indices]


def collate(kind: str):
    """``collate_fn`` turning a list of sample indices into a batch of ``kind``."""

    def x(indices):
        return torch.tensor([[float(i), 1.0] for i in indices])

    def make(indices):
        if kind == "tensor":
            return x(indices)
        if kind == "tuple":
            return x(indices), torch.tensor(indices, dtype=torch.float32)
        if kind == "nested dict":
            return {"meta": {"source": "synthetic"}, "inputs": {"x": x(indices)}, "label": torch.tensor(indices)}
        if kind == "dataclass":
            return Features(torch.zeros(len(indices), 3, 2, 2), torch.tensor(indices))
        if kind == "named tuple":
            return Pair(x(indices), torch.tensor(indices))
        if kind == "graph batch":
            return GraphBatch([torch.zeros(1 + i % 3, 4) for i in indices])
        if kind == "strings":
            return {"text": _texts(indices), "label": torch.tensor(indices)}
        if kind == "nested tensor":
            return torch.nested.nested_tensor([torch.zeros(len(_tokens(i)), 2) for i in indices], layout=torch.jagged)
        if kind == "ragged list":
            return [torch.tensor(_tokens(i)) for i in indices]
        if kind == "list of dicts":  # a collate returning its samples: VAL (11) ends with a batch of one
            return [{"x": torch.tensor([float(i), 1.0]), "text": _texts([i])[0], "label": i} for i in indices]
        if kind == "list of tuples":  # collate_fn=list on a TensorDataset
            return [(torch.tensor([float(i), 1.0]), torch.tensor(float(i))) for i in indices]
        if kind == "opaque":
            return Opaque()
        raise AssertionError(kind)

    return make


# Samples batched by the DataLoader's own default_collate, which a batch alone cannot tell from a
# collate_fn=list batch of samples: the data loader says it.
DEFAULT_COLLATED = {
    # (source, target) text pairs: a list of two tuples of BATCH strings
    "default_collate of text pairs": lambda i: (_texts([i])[0], _texts([i + 1])[0]),
    # 1-tuples of dicts: [{"x": X}]
    "default_collate of 1-tuples of dicts": lambda i: ({"x": torch.tensor([float(i), 1.0])},),
}

KINDS = ["tensor", "tuple", "nested dict", "dataclass", "named tuple", "graph batch", "strings", "nested tensor",
         "list of dicts", "list of tuples", *DEFAULT_COLLATED]


def loader(n: int, kind: str, offset: int = 0):
    indices = list(range(offset, offset + n))
    if kind in DEFAULT_COLLATED:
        return torch.utils.data.DataLoader([DEFAULT_COLLATED[kind](i) for i in indices], batch_size=BATCH)
    return torch.utils.data.DataLoader(indices, batch_size=BATCH, collate_fn=collate(kind))


def energy_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]


def by_phase(records) -> dict[str, list]:
    out: dict[str, list] = {}
    for record in records:
        out.setdefault(record.phase, []).append(record)
    return out


# ------------------------------------------------------------------------------ Lightning
def counted_in_every_loop(tmp_path, loader, sizes, **trainer_options) -> tuple[dict, list[str]]:
    """A fit, test and predict of ``lightning_module``'s model over ``loader(n)`` for ``sizes``
    (training, validation, test, predict): ({phase: [(samples, counted)]}, the energy warnings)."""
    L, AnyBatch = lightning_module()
    from greencallbacks.lightning import EnergyCallback

    train, val, test, predict = sizes
    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False)
    trainer = L.Trainer(**{"max_epochs": 1, "accelerator": "cpu", "devices": 1, "logger": False, "callbacks": [callback],
                           "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
                           **trainer_options})
    model = AnyBatch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(train), loader(val))
        trainer.test(model, loader(test), verbose=False)
        trainer.predict(model, loader(predict))
    counted = {phase: [(r.samples, r.samples_counted) for r in records]
               for phase, records in by_phase(read_records(tmp_path)).items() if phase != "other"}
    return counted, energy_warnings(caught)


def lightning_module():
    L = pytest.importorskip("lightning.pytorch")

    class AnyBatch(L.LightningModule):
        """Learns nothing from the batch: any batch kind goes through every loop."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            return (self.w ** 2).sum()

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("val_loss", (self.w ** 2).sum(), batch_size=1)

        def test_step(self, batch, batch_idx):
            self.log("test_loss", (self.w ** 2).sum(), batch_size=1)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self.w.detach()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return L, AnyBatch


def lightning_run(tmp_path, kind: str, **callback_kwargs):
    L, AnyBatch = lightning_module()
    from greencallbacks.lightning import EnergyCallback

    callback = EnergyCallback(output_dir=tmp_path / "energy", intensity=100.0, progress_bar=False, **callback_kwargs)
    csv_logger = L.loggers.CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=csv_logger, callbacks=[callback], num_sanity_val_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    model = AnyBatch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(TRAIN, kind), loader(VAL, kind, offset=100))
        trainer.test(model, loader(TEST, kind, offset=200), verbose=False)
        trainer.predict(model, loader(PREDICT, kind, offset=300))
    columns = set()
    for path in (tmp_path / "csv").rglob("metrics.csv"):
        columns |= set(path.read_text().splitlines()[0].split(","))
    return by_phase(read_records(tmp_path / "energy")), energy_warnings(caught), columns


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_lightning_counts_every_batch_kind_exactly(tmp_path, kind):
    phases, messages, columns = lightning_run(tmp_path, kind)
    assert [r.samples for r in phases["train"]] == [TRAIN, TRAIN]
    assert [r.samples for r in phases["validation"]] == [VAL, VAL]  # the sanity check is not counted
    assert [r.samples for r in phases["test"]] == [TEST]
    assert [r.samples for r in phases["predict"]] == [PREDICT]
    assert all(r.samples_counted and r.energy_j_per_sample > 0 for rs in phases.values() for r in rs if r.phase != "other")
    assert not [m for m in messages if "count" in m], messages
    assert {"energy_j_per_sample", "val_energy_j_per_sample", "test_energy_j_per_sample"} <= columns


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_counts_by_each_stages_own_loaders_across_a_validation_inside_an_epoch(tmp_path):
    """Training batches of samples (collate_fn=list) around validations of default_collate text
    pairs inside each epoch: each loop's batches are read by the rule its own loaders call for."""
    L, AnyBatch = lightning_module()
    from greencallbacks.lightning import EnergyCallback

    callback = EnergyCallback(output_dir=tmp_path / "energy", intensity=100.0, progress_bar=False)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=[callback], val_check_interval=2,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    model = AnyBatch()
    trainer.fit(model, loader(TRAIN, "list of tuples"), loader(VAL, "default_collate of text pairs", offset=100))
    phases = by_phase(read_records(tmp_path / "energy"))
    assert [r.samples for r in phases["train"]] == [TRAIN, TRAIN]
    assert [r.samples for r in phases["validation"]] == [VAL] * 4  # at batches 2 and 4 of each 5-batch epoch


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_counts_each_loader_by_its_own_collate_and_a_remade_batch_as_it_arrives(tmp_path):
    """Training from {default_collate text pairs, collate_fn=list samples}, validation from a list
    of both: each loader's batches by its own rule (the text pairs counted 2 a batch when the rule
    was the whole loop's). Then a model whose on_before_batch_transfer remakes each default_collate
    batch into per-sample records (a detection model's input): counted as the list it became."""
    L, AnyBatch = lightning_module()
    from greencallbacks.lightning import EnergyCallback

    def fit(model, train, val, out):
        callback = EnergyCallback(output_dir=out, intensity=100.0, progress_bar=False)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        trainer.fit(model, train, val)
        return by_phase(read_records(out))

    pairs, samples = "default_collate of text pairs", "list of tuples"
    phases = fit(AnyBatch(), {"a": loader(TRAIN, pairs), "b": loader(TRAIN, samples)},
                 [loader(VAL, pairs, offset=100), loader(VAL, samples, offset=200)], tmp_path / "mixed")
    assert [r.samples for r in phases["train"]] == [2 * TRAIN]
    assert [r.samples for r in phases["validation"]] == [2 * VAL]
    # collate_fn=list of equal-length vectors: alone, [tensor(4), tensor(4)] reads as fields [x, y].
    vectors = torch.utils.data.DataLoader([torch.zeros(4)] * TRAIN, batch_size=BATCH, collate_fn=list)
    phases = fit(AnyBatch(), vectors, torch.utils.data.DataLoader([torch.zeros(4)] * VAL, batch_size=2, collate_fn=list),
                 tmp_path / "vectors")
    assert [r.samples for r in phases["train"]] == [TRAIN]
    assert [r.samples for r in phases["validation"]] == [VAL]

    class Records(AnyBatch):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            return [{"x": x} for x in batch[0]]  # (x, y) fields -> one record per sample

    images = lambda i: (torch.zeros(3, 4, 4), i)  # noqa: E731
    DEFAULT_COLLATED["images"] = images
    try:
        phases = fit(Records(), loader(TRAIN, "images"), loader(VAL, "images", offset=100), tmp_path / "remade")
    finally:
        del DEFAULT_COLLATED["images"]
    assert [r.samples for r in phases["train"]] == [TRAIN]
    assert [r.samples for r in phases["validation"]] == [VAL]

    class Merged(AnyBatch):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            if isinstance(batch, dict):  # two training loaders' batches, stacked into one tensor
                return torch.cat([batch["a"][0], batch["b"][0]])
            return batch

    phases = fit(Merged(), {"a": loader(TRAIN, "tuple"), "b": loader(TRAIN, "tuple", offset=50)},
                 loader(VAL, "tuple", offset=100), tmp_path / "merged")
    assert [r.samples for r in phases["train"]] == [2 * TRAIN]  # not its rows split as two loaders' batches


def _pairs(n: int, size: int):
    data = torch.utils.data.TensorDataset(torch.randn(n, 4), torch.randn(n, 1))
    return torch.utils.data.DataLoader(data, batch_size=size)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode, sizes, samples", [
    ("max_size_cycle", (30, 10), 30 + 14),  # b's batches (4, 4, 2) cycle to a's 4 steps: 4 + 4 + 2 + 4
    ("min_size", (30, 10), 24 + 10),  # 3 steps
    ("max_size", (30, 10), 30 + 10),  # b's part is None once it is exhausted
    ("max_size", (10, 30), 10 + 30),  # a's part is None: {"a": None, "b": [x, y]}
    ("sequential", (30, 10), 30 + 10),  # one loader's batch at a time
])
def test_lightning_counts_each_loader_of_a_combined_batch_in_every_loop(tmp_path, mode, sizes, samples):
    """Regression: validation and test from a CombinedLoader in a mode other than "sequential"
    counted each batch {"a": [x, y], "b": [x, y]} as a whole by loader a's rule, which reads a's
    part alone (30 samples for 44). Training from nested iterables {"a": [loader, loader], "b":
    loader} read each [x, y] of "a" as 2 samples (30 for 80). Each loader's batch is counted."""
    L, AnyBatch = lightning_module()
    from lightning.pytorch.utilities import CombinedLoader

    from greencallbacks.lightning import EnergyCallback

    class EveryLoader(AnyBatch):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("test_loss", (self.w ** 2).sum(), batch_size=1)

    def combined():
        return CombinedLoader({"a": _pairs(sizes[0], 8), "b": _pairs(sizes[1], 4)}, mode=mode)

    # Training: "a" holds two loaders of 2 and 3 batches, "b" one of 5: 5 steps of 8 + 4 + 4.
    train = CombinedLoader({"a": [_pairs(16, 8), _pairs(12, 4)], "b": _pairs(20, 4)}, mode="max_size_cycle")
    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    model = EveryLoader()
    trainer.fit(model, train, combined())
    trainer.test(model, combined(), verbose=False)
    phases = by_phase(read_records(tmp_path))
    assert [(r.samples, r.samples_counted) for r in phases["train"]] == [(80, True)]
    assert [(r.samples, r.samples_counted) for r in phases["validation"]] == [(samples, True)]
    assert [(r.samples, r.samples_counted) for r in phases["test"]] == [(samples, True)]


def test_lightning_a_combined_loaders_mode_it_cannot_read_leaves_batches_counted_whole():
    """The guard on the private seam: CombinedLoader's mode is read from ``_mode`` on the loop's
    ``_combined_loader`` (Lightning 2.2 to 2.6). A release without them: each batch is counted
    whole by the general rule, as before the seam was used, and nothing raises."""
    from types import SimpleNamespace

    from greencallbacks.lightning import EnergyCallback

    callback = EnergyCallback(progress_bar=False)
    no_loops = SimpleNamespace(state=SimpleNamespace(fn="fit"), lightning_module=None, datamodule=None)
    loaders = {"a": _pairs(16, 8), "b": _pairs(8, 4)}
    callback._plan_evaluation(no_loops, loaders, "validation")
    assert callback._eval_parts is None and len(callback._eval_collates) == 2
    with_mode = SimpleNamespace(state=SimpleNamespace(fn="validate"), lightning_module=None, datamodule=None,
                                validate_loop=SimpleNamespace(_combined_loader=SimpleNamespace(_mode="min_size")))
    callback._plan_evaluation(with_mode, loaders, "validation")
    assert callback._eval_parts is not None  # read: counted loader by loader


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_uncountable_batches_say_so_once_and_log_no_per_sample_value(tmp_path):
    phases, messages, columns = lightning_run(tmp_path, "opaque")
    for phase in ("train", "validation", "test", "predict"):
        for record in phases[phase]:
            assert record.samples_counted is False and record.energy_j_per_sample is None, record
            assert record.co2eq_g_per_sample is None and record.energy_kwh > 0
    counting = [m for m in messages if "count the samples" in m]
    assert len(counting) == 1, messages  # one per run, for all its phases
    assert "Opaque" in counting[0] and "sample_counter=" in counting[0]
    assert not {c for c in columns if "per_sample" in c}, columns
    assert "energy_kwh" in columns


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_sample_and_token_counters(tmp_path):
    phases, messages, columns = lightning_run(
        tmp_path, "opaque",
        sample_counter=lambda batch: BATCH,  # wrong for partial batches on purpose: the user's rule wins
        token_counter=lambda batch: 3,
    )
    batches = {n: math.ceil(n / BATCH) for n in (TRAIN, VAL, TEST, PREDICT)}
    assert [r.samples for r in phases["train"]] == [BATCH * batches[TRAIN]] * 2
    assert [r.tokens for r in phases["train"]] == [3 * batches[TRAIN]] * 2
    assert [r.tokens for r in phases["validation"]] == [3 * batches[VAL]] * 2
    assert {"energy_j_per_token", "val_energy_j_per_token", "test_energy_j_per_token"} <= columns
    assert not [m for m in messages if "count" in m], messages


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_token_counter_counts_real_tokens(tmp_path):
    # A list of per-sample tensors (collate_fn=list): a batch of one, or of equal lengths, looks
    # like [x, y] fields, so such batches take sample_counter=len (as the docs say).
    phases, _, columns = lightning_run(
        tmp_path, "ragged list", sample_counter=len, token_counter=lambda batch: sum(len(t) for t in batch)
    )
    assert [r.tokens for r in phases["train"]] == [sum(len(_tokens(i)) for i in range(TRAIN))] * 2
    assert [r.tokens for r in phases["test"]] == [sum(len(_tokens(i)) for i in range(200, 200 + TEST))]
    assert [r.samples for r in phases["train"]] == [TRAIN, TRAIN]


# -------------------------------------------------------------------------------------- HF
def hf_text_data(n: int, offset: int = 0) -> list[dict]:
    """Tokenised sentences of 1..4 words for ``DataCollatorWithPadding`` (padded per batch)."""
    from test_samples import tiny_tokenizer

    tokenizer = tiny_tokenizer(WORDS)
    return [{**tokenizer(text), "labels": i % 2} for i, text in zip(range(offset, offset + n), _texts(range(offset, offset + n)))]


class FailingAt:
    """Makes a model's forward raise at its ``at``-th call (a step that raised must not be counted)."""

    def __init__(self, model, at: int) -> None:
        self.calls, self.at = 0, at
        forward = model.forward

        @functools.wraps(forward)  # the Trainer picks the batch's columns by forward's signature
        def failing_forward(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                raise RuntimeError(f"forward {self.at} fails")
            return forward(*args, **kwargs)

        model.forward = failing_forward


def hf_trainer(tmp_path, callback, **overrides):
    pytest.importorskip("transformers")
    from transformers import DataCollatorWithPadding, Trainer

    from hf_tiny import tiny_model, training_args
    from test_samples import tiny_tokenizer

    overrides.setdefault("per_device_train_batch_size", BATCH)
    overrides.setdefault("per_device_eval_batch_size", BATCH)
    return Trainer(
        model=tiny_model(), args=training_args(tmp_path / "out", **overrides),
        train_dataset=hf_text_data(TRAIN), eval_dataset=hf_text_data(VAL, offset=100),
        data_collator=DataCollatorWithPadding(tiny_tokenizer(WORDS)), callbacks=[callback],
    )


def hf_callback(**kwargs):
    from greencallbacks.hf import EnergyCallback

    return EnergyCallback(intensity=100.0, **kwargs)


def test_hf_counts_collator_batches_exactly_with_tokens(tmp_path):
    callback = hf_callback(token_counter=lambda batch: int(batch["attention_mask"].sum()))
    trainer = hf_trainer(tmp_path, callback)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
        predicted = trainer.predict(hf_text_data(PREDICT, offset=300))
    phases = by_phase(read_records(tmp_path / "out"))
    assert [r.samples for r in phases["train"]] == [TRAIN, TRAIN]
    assert [r.samples for r in phases["validation"]] == [VAL, VAL]
    assert [r.samples for r in phases["predict"]] == [PREDICT]
    words = {name: sum(len(_tokens(i)) for i in range(offset, offset + n))
             for name, n, offset in (("train", TRAIN, 0), ("validation", VAL, 100), ("predict", PREDICT, 300))}
    assert [r.tokens for r in phases["train"]] == [words["train"]] * 2  # padding excluded by the mask
    assert [r.tokens for r in phases["validation"]] == [words["validation"]] * 2
    assert phases["predict"][0].tokens == words["predict"]
    assert all(r.samples_counted for rs in phases.values() for r in rs)
    assert predicted.metrics["test_energy_j_per_token"] > 0
    assert "energy_j_per_token" in [e for e in trainer.state.log_history if "energy_kwh" in e][0]
    assert not [m for m in energy_warnings(caught) if "count" in m]


def test_hf_sample_counter_and_validation(tmp_path):
    with pytest.raises(ValueError, match="sample_counter"):
        hf_callback(sample_counter=3)
    with pytest.raises(ValueError, match="token_counter"):
        hf_callback(token_counter="tokens")
    trainer = hf_trainer(tmp_path, hf_callback(sample_counter=lambda batch: 2), num_train_epochs=1)
    trainer.train()
    phases = by_phase(read_records(tmp_path / "out"))
    assert [r.samples for r in phases["train"]] == [2 * math.ceil(TRAIN / BATCH)]
    assert [r.samples for r in phases["validation"]] == [2 * math.ceil(VAL / BATCH)]


def test_hf_a_training_batch_that_raised_is_not_counted(tmp_path):
    callback = hf_callback()
    trainer = hf_trainer(tmp_path, callback, num_train_epochs=1, eval_strategy="no")
    FailingAt(trainer.model, at=3)  # the third training step raises: two batches completed
    with pytest.raises(RuntimeError, match="forward 3 fails"):
        trainer.train()
    callback._abort()  # what the watch does a moment later
    (train,) = by_phase(read_records(tmp_path / "out"))["train"]
    assert train.partial and train.samples == 2 * BATCH


def test_hf_an_evaluation_that_raised_keeps_its_completed_batches(tmp_path):
    trainer = hf_trainer(tmp_path, hf_callback(), num_train_epochs=1, eval_strategy="no")
    FailingAt(trainer.model, at=3)  # the third evaluation batch raises
    with pytest.raises(RuntimeError, match="forward 3 fails"):
        trainer.evaluate()
    (validation,) = by_phase(read_records(tmp_path / "out"))["validation"]
    assert validation.partial and validation.samples == 2 * BATCH and validation.samples_counted


# ----------------------------------------------------------------------------------- Keras
KERAS_RUNNER = Path(__file__).with_name("keras_samples_runner.py")


@pytest.fixture(scope="module", params=["torch", "tensorflow", "jax"])
def keras_results(request, tmp_path_factory):
    import importlib.util

    for module in ("keras", request.param):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the Keras {request.param}-backend scenarios need it")
    out = tmp_path_factory.mktemp(f"keras-samples-{request.param}")
    env = {**os.environ, "KERAS_BACKEND": request.param, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(KERAS_RUNNER), request.param, str(out)], cwd=out, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def samples_by_phase(result) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for record in result["records"]:
        out.setdefault(record["phase"], []).append(record["samples"])
    return out


@pytest.mark.parametrize("model", ["single", "list", "tuple", "dict"])
def test_keras_counts_single_and_multi_input_output_models(keras_results, model):
    result = keras_results[model]
    assert samples_by_phase(result) == {"train": [TRAIN, TRAIN], "validation": [VAL, VAL], "test": [TEST], "predict": [PREDICT]}
    assert all(r["samples_counted"] and r["energy_j_per_sample"] > 0 for r in result["records"])
    assert all(v > 0 for v in result["history"]["energy_j_per_sample"] + result["history"]["val_energy_j_per_sample"])
    assert not [w for w in result["warnings"] if "count" in w], result["warnings"]


def test_keras_token_counter_reads_a_token_metric(keras_results):
    result = keras_results["dict"]
    tokens = {}
    for record in result["records"]:
        tokens.setdefault(record["phase"], []).append(record["tokens"])
    nonzero = result["nonzero"]
    assert tokens == {"train": [nonzero["train"]] * 2, "validation": [nonzero["validation"]] * 2,
                      "test": [nonzero["test"]], "predict": [None]}


def test_keras_empty_validation_counts_zero_and_logs_nan(keras_results):
    result = keras_results["empty_validation"]
    assert samples_by_phase(result) == {"train": [TRAIN, TRAIN], "validation": [0, 0], "test": [TEST], "predict": [PREDICT]}
    validation = [r for r in result["records"] if r["phase"] == "validation"]
    assert all(r["energy_j_per_sample"] is None and r["energy_kwh"] > 0 for r in validation)
    assert result["history"]["val_energy_j_per_sample"] == [None, None]  # NaN in History
    assert all(v > 0 for v in result["history"]["energy_j_per_sample"])


def test_keras_uncountable_predict_outputs_say_so(keras_results):
    result = keras_results["uncounted_predict"]
    (predict,) = [r for r in result["records"] if r["phase"] == "predict"]
    assert predict["samples_counted"] is False and predict["energy_j_per_sample"] is None
    counting = [w for w in result["warnings"] if "sample_counter" in w]
    assert len(counting) == 1 and "numpy.ndarray" in counting[0], result["warnings"]


def test_keras_bad_counters_fail_at_construction():
    code = (
        "from greencallbacks.keras import EnergyCallback\n"
        "for kwargs, name in (({'sample_counter': 3}, 'sample_counter'), ({'token_counter': len}, 'token_counter')):\n"
        "    try:\n        EnergyCallback(**kwargs)\n    except ValueError as error:\n        assert name in str(error), error\n"
        "    else:\n        raise AssertionError(name)\n"
    )
    pytest.importorskip("keras")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_hf_uncountable_batches_say_so_once(tmp_path):
    trainer = hf_trainer(tmp_path, hf_callback(sample_counter=lambda batch: None), num_train_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    phases = by_phase(read_records(tmp_path / "out"))
    assert all(not r.samples_counted and r.energy_j_per_sample is None for r in phases["train"] + phases["validation"])
    counting = [m for m in energy_warnings(caught) if "sample_counter" in m]
    assert len(counting) == 1 and "BatchEncoding" in counting[0], counting
    logged = [e for e in trainer.state.log_history if "energy_kwh" in e or "eval_energy_kwh" in e]
    assert logged and not [k for e in logged for k in e if "per_sample" in k]
