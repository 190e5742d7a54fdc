"""LLM fine-tuning: the HF adapter through TRL's ``SFTTrainer`` (packing, padding-free, padding) and
a PEFT LoRA model, on a tiny Llama and a word-level tokenizer built here (no downloads).

The counts are checked against the data set TRL prepared (its documents, and the ``seq_lengths``
of its packed rows), not against ``count_samples``. The tests that need TRL, PEFT or datasets skip
without them; the padded packed row they regress on is also built by hand, so CI checks it too.
"""

from __future__ import annotations

import random
import warnings

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from transformers import Trainer, TrainerCallback  # noqa: E402

from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.samples import BatchCounter, count_samples  # noqa: E402
from tests.flow_invariants import check_run, meter_threads  # noqa: E402
from tests.hf_tiny import POWER_W, scripted_sensor, training_args  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = [f"w{i}" for i in range(40)]
PAD, EOS = 0, 2
TRAIN_DOCS, EVAL_DOCS = 21, 9


def _trl():
    for name in ("datasets", "peft"):
        pytest.importorskip(name)
    return pytest.importorskip("trl")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<unk>": 1, "<eos>": EOS, "<bos>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   bos_token="<bos>")


def _texts(n, seed):
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({"text": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(n)]})


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS) + 4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=3))


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


def _sft(output_dir, model=None, callbacks=(), **overrides):
    trl = _trl()
    import datasets

    datasets.disable_progress_bar()
    settings = dict(output_dir=str(output_dir), num_train_epochs=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                    use_cpu=True, report_to="none", logging_strategy="epoch", eval_strategy="epoch", save_strategy="no",
                    disable_tqdm=True, max_length=24, include_num_input_tokens_seen=True, seed=0, dataloader_num_workers=0)
    settings.update(overrides)
    callback = EnergyCallback(intensity=400.0, sensors=[scripted_sensor()])
    trainer = trl.SFTTrainer(model=model or _tiny_llama(), args=trl.SFTConfig(**settings), train_dataset=_texts(TRAIN_DOCS, 0),
                             eval_dataset=_texts(EVAL_DOCS, 1), processing_class=_tokenizer(),
                             callbacks=[callback, *callbacks])
    return trainer, callback


def _documents(dataset) -> int:
    """The documents in a data set TRL prepared: its rows, or the documents packed into them."""
    return sum(len(row["seq_lengths"]) for row in dataset) if "seq_lengths" in dataset.column_names else len(dataset)


@pytest.mark.parametrize("settings", [
    {},  # padding to the longest of each batch
    {"padding_free": True, "max_length": None},
    {"packing": True},  # best-fit packing: padding-free rows of several documents
    {"packing": True, "eval_packing": False},
    {"padding_free": True, "max_length": None, "pad_to_multiple_of": 8},
    {"packing": True, "pad_to_multiple_of": 8},
], ids=["padded", "padding_free", "packing", "packing_eval_unpacked", "padding_free_pad8", "packing_pad8"])
def test_sft_records_the_documents_and_tokens_it_trained_on(tmp_path, settings):
    """Regression: TRL pads a padding-free row to ``pad_to_multiple_of`` with pad tokens at position 0,
    each a sequence of its own in its ``cu_seq_lens_q``: the records counted 52 and 36 samples for
    the 21 documents of each epoch, 24 for 9 in evaluation (packed: 28 and 16), marked exact. Now
    the documents."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, callback = _sft(tmp_path, **settings)
        trainer.train()
        metrics = trainer.evaluate()
    train_docs, eval_docs = _documents(trainer.train_dataset), _documents(trainer.eval_dataset)
    assert (train_docs, eval_docs) == (TRAIN_DOCS, EVAL_DOCS)  # no document dropped or split here
    records = check_run(callback.tracker.run_id, [tmp_path], power_w=POWER_W)
    assert [r.samples for r in records if r.phase == "train"] == [train_docs] * 2
    assert [r.samples for r in records if r.phase == "validation"] == [eval_docs] * 3
    assert all(r.samples_counted for r in records)
    assert metrics["eval_energy_j_per_sample"] == pytest.approx(records[-2].energy_j / eval_docs, rel=1e-9)
    # Tokens: HF's count (padding included), every one once, and the logged energy per token from it.
    trained = [r for r in records if r.phase == "train"]
    assert sum(r.tokens for r in trained) == trainer.state.num_input_tokens_seen
    if trainer.data_collator.padding_free and not settings.get("pad_to_multiple_of"):
        assert trainer.state.num_input_tokens_seen == 2 * sum(len(row["input_ids"]) for row in trainer.train_dataset)
    logged = [e["energy_j_per_token"] for e in trainer.state.log_history if "energy_j_per_token" in e]
    assert logged == pytest.approx([r.energy_j / r.tokens for r in trained], rel=1e-9)
    assert not [w for w in caught if issubclass(w.category, EnergyWarning)]
    assert meter_threads() == []


class _PreemptedAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("preempted")


@pytest.mark.parametrize("packing", [False, True])
def test_lora_checkpointed_mid_epoch_and_resumed_counts_each_batch_it_ran(tmp_path, packing):
    _trl()
    batch = 1 if packing else 4  # packed: 8 rows of 21 documents
    settings = dict(packing=packing, per_device_train_batch_size=batch, save_strategy="steps", save_steps=3)
    trainer, first = _sft(tmp_path, model=_lora(_tiny_llama()), callbacks=[_PreemptedAt(4)], **settings)
    steps_docs = [len(b["cu_seq_lens_q"]) - 1 if packing else len(b["input_ids"]) for b in trainer.get_train_dataloader()]
    with pytest.raises(RuntimeError, match="preempted"):
        trainer.train()
    trainer, resumed = _sft(tmp_path, model=_lora(_tiny_llama()), **settings)
    trainer.train(resume_from_checkpoint=True)
    assert resumed.tracker.run_id == first.tracker.run_id
    records = check_run(first.tracker.run_id, [tmp_path], power_w=POWER_W)
    train = [(r.attempt, r.epoch, r.samples, r.partial) for r in records if r.phase == "train"]
    # Step 4 ran twice: before the failure, and again after the resume from step 3.
    assert train == [(0, 0, sum(steps_docs[:4]), True), (1, 0, sum(steps_docs[3:]), False), (1, 1, TRAIN_DOCS, False)]
    assert all(r.samples_counted for r in records)
    assert meter_threads() == []


def _padded_packed_row(lengths, multiple, device="cpu"):
    """A batch as TRL's padding-free collator gives it: documents of ``lengths`` in one row, padded
    with PAD to a multiple of ``multiple``, each pad token at position 0, ``cu_seq_lens_q`` from
    the positions."""
    positions = torch.cat([torch.arange(n) for n in lengths])
    ids = torch.randint(4, 44, positions.shape)
    pad = -len(positions) % multiple
    ids = torch.cat([ids, torch.full((pad,), PAD)])[None]
    positions = torch.cat([positions, torch.zeros(pad, dtype=torch.long)])[None]
    starts = (positions[0] == 0).nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([positions.size(1)])]).to(torch.int32)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": positions, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
    return {k: v.to(device) for k, v in batch.items()}


def test_count_samples_leaves_out_the_padding_of_a_packed_row_given_its_pad_token():
    batch = _padded_packed_row([3, 1, 5], multiple=8)  # 9 tokens + 7 pad tokens
    assert count_samples(batch) == 10  # without the pad token: each pad token restarts the positions
    assert count_samples(batch, pad_token_id=PAD) == 3
    assert count_samples(_padded_packed_row([3, 5], multiple=8), pad_token_id=PAD) == 2  # no padding
    assert count_samples({"input_ids": torch.ones(4, 6, dtype=torch.long)}, "rows", pad_token_id=PAD) == 4
    # Off the CPU, leaving them out would read the tokens back (a sync per step): uncounted.
    assert count_samples(_padded_packed_row([3, 1, 5], 8, device="meta"), pad_token_id=PAD) is None
    assert count_samples(_padded_packed_row([3, 1, 5], 8, device="meta")) == 10
    counter = BatchCounter()
    counter.pad_token_id = PAD
    with pytest.warns(EnergyWarning, match="padded to a multiple: its cu_seq_lens_q counts each pad token"):
        assert counter.count(_padded_packed_row([3, 1, 5], 8, device="meta")) == (None, 0)


class _PaddedFlatteningCollator:
    """What the adapter reads of TRL's ``DataCollatorForLanguageModeling(padding_free=True, pad_to_multiple_of=8)``."""

    padding_free, pad_to_multiple_of, pad_token_id = True, 8, PAD

    def __call__(self, features):
        batch = _padded_packed_row([len(f["input_ids"]) for f in features], self.pad_to_multiple_of)
        batch["input_ids"][0, : sum(len(f["input_ids"]) for f in features)] = torch.cat([torch.tensor(f["input_ids"]) for f in features])
        batch["labels"] = batch["input_ids"].clone()
        return batch


def test_hf_trainer_counts_the_documents_of_a_padded_padding_free_row(tmp_path):
    """The adapter gives ``count_samples`` the pad token of a padding-free collator that pads its row:
    before, the 10 documents of each epoch read as 20, the 5 of each evaluation as 13 (their pad tokens)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    generator = torch.Generator().manual_seed(0)
    docs = [{"input_ids": torch.randint(4, 44, (int(k),), generator=generator).tolist()}
            for k in torch.randint(1, 7, (10,), generator=generator)]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=44, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=EOS, eos_token_id=EOS))
    callback = EnergyCallback(intensity=400.0, sensors=[scripted_sensor()])
    trainer = Trainer(model=model, args=training_args(tmp_path, remove_unused_columns=False, per_device_train_batch_size=4,
                                                      per_device_eval_batch_size=4),
                      train_dataset=docs, eval_dataset=docs[:5], data_collator=_PaddedFlatteningCollator(), callbacks=[callback])
    trainer.train()
    records = check_run(callback.tracker.run_id, [tmp_path], power_w=POWER_W)
    assert [(r.phase, r.samples, r.samples_counted) for r in records if r.phase != "other"] == [
        ("train", 10, True), ("validation", 5, True), ("train", 10, True), ("validation", 5, True)]


def test_sft_keeps_its_own_metrics_in_its_own_log_entries(tmp_path):
    """Regression: TRL's trainers override ``Trainer.log`` to add the metrics they collected since
    their last log (``mean_token_accuracy``, ``entropy``, ``num_tokens``) to whatever is logged, then
    clear them. Logged through it, each energy entry took the training metrics the next loss entry
    should have had (its averages then covered fewer steps). The energy entries go through the base
    ``Trainer.log`` now: every other entry is what the same run logs without the callback."""
    def logged(with_callback):
        trainer, _ = _sft(tmp_path / str(with_callback), logging_strategy="steps", logging_steps=2)
        if not with_callback:
            trainer.remove_callback(EnergyCallback)
        trainer.train()
        trainer.evaluate()
        return trainer.state.log_history

    mine = logged(True)
    ours = [e for e in mine if any(k.startswith("energy_") for k in e)]  # evaluations: HF's entries
    assert len(ours) == 8  # the energy so far at each of the 6 logging steps, and each epoch's
    trl_metrics = ("mean_token_accuracy", "entropy", "num_tokens")
    assert not [k for e in ours for k in e if k in trl_metrics]
    theirs = [{k: v for k, v in e.items() if not k.startswith("eval_energy_") and k != "eval_co2eq_g"
               and not k.startswith(("eval_co2eq_g_", "eval_power_w"))} for e in mine if e not in ours]
    volatile = ("_runtime", "_per_second", "total_flos")  # timings differ run to run

    def steady(entries):
        return [{k: v for k, v in e.items() if not k.endswith(volatile)} for e in entries]

    assert steady(theirs) == steady(logged(False))
