"""TRL's preference trainers count preference pairs, as HF does, on one rank as on several.

DPO's and the reward model's collators (TRL 1.x) stack each pair's chosen and rejected sequences
into one ``input_ids`` of 2 x pairs rows. Counted as rows, 10 pairs trained made 20 samples, while
HF's own ``train_samples_per_second`` / ``eval_samples_per_second``, older TRL's separate chosen and
rejected tensors, and this callback's evaluation count on several ranks (the data set's length)
give 10: J/sample halved, and by how many GPUs evaluated.
"""

from __future__ import annotations

import copy
import random
import warnings

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.test_hf_trl import EOS, PAD, WORDS, _tiny_llama, _tokenizer, _trl  # noqa: E402

pytestmark = pytest.mark.slow

PAIRS, EVAL_PAIRS = 10, 7  # batches of 4: partial last batches


def _pairs(n: int, seed: int):
    import datasets

    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return datasets.Dataset.from_dict({"prompt": [words(3) for _ in range(n)], "chosen": [words(2) for _ in range(n)],
                                       "rejected": [words(3) for _ in range(n)]})


def _reward_model():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(WORDS) + 4, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=3, num_labels=1))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["DPO", "Reward"])
def test_a_preference_trainer_counts_its_pairs(tmp_path, kind):
    trl = _trl()
    import datasets

    datasets.disable_progress_bar()
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4, num_train_epochs=1,
                  use_cpu=True, report_to="none", save_strategy="no", logging_strategy="epoch", eval_strategy="epoch",
                  disable_tqdm=True, seed=0, dataloader_num_workers=0, max_length=16)
    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0)
    data = dict(train_dataset=_pairs(PAIRS, 0), eval_dataset=_pairs(EVAL_PAIRS, 1), processing_class=_tokenizer(),
                callbacks=[callback])
    if kind == "DPO":
        model = _tiny_llama()
        trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=trl.DPOConfig(**common), **data)
    else:
        trainer = trl.RewardTrainer(model=_reward_model(), args=trl.RewardConfig(**common), **data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
        trainer.evaluate()
    records = [r for r in read_records(tmp_path) if r.phase in ("train", "validation")]
    assert [(r.phase, r.samples, r.samples_counted) for r in records] == [
        ("train", PAIRS, True), ("validation", EVAL_PAIRS, True), ("validation", EVAL_PAIRS, True)]
    assert not [w for w in caught if issubclass(w.category, EnergyWarning) and "count the samples" in str(w.message)]


def test_older_trl_s_collator_of_that_name_keeps_a_row_per_pair():
    """TRL before 1.x had a ``DataCollatorForPreference`` too, giving ``prompt_input_ids``,
    ``chosen_input_ids`` and ``rejected_input_ids`` of a row per pair: halved, 4 pairs were 2."""
    from greencallbacks.hf import _rows_per_pair
    from greencallbacks.samples import BatchCounter

    class DataCollatorForPreference:  # the older layout, keys and all
        def __call__(self, examples):
            return {key: torch.ones(len(examples), 3, dtype=torch.long) for key in
                    ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")}

    DataCollatorForPreference.__module__ = "trl.trainer.dpo_trainer"
    counter = BatchCounter()
    counter.collate, counter.rows_per_sample = "rows", _rows_per_pair(DataCollatorForPreference())
    examples = [{"prompt_input_ids": [1], "chosen_input_ids": [2], "rejected_input_ids": [3]}] * 4
    assert counter.count(DataCollatorForPreference()(examples)) == (4, 0)
