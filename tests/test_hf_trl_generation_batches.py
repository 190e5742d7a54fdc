"""TRL's online trainers (GRPO, RLOO) train each step on a slice of a generation batch.

Their data loader gives ``training_step`` a *generation* batch of ``steps_per_generation``
micro-batches (the gradient accumulation steps, by default); ``_prepare_inputs`` generates for it
once and returns the slice each step trains on. Counted as given, every step counted the whole
generation batch: 2 times the completions trained at 2 accumulation steps, marked exact. The
expected counts are the completions ``compute_loss`` received, read by a spy, not ``count_samples``.
"""

from __future__ import annotations

import random
import warnings

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.test_hf_trl import WORDS, _tiny_llama, _tokenizer, _trl  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = 12


def _reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["GRPO", "RLOO"])
@pytest.mark.parametrize("accumulation, iterations", [(2, 1), (3, 2), (1, 1)])
def test_each_step_counts_the_completions_it_trained(tmp_path, kind, accumulation, iterations):
    trl = _trl()
    import datasets

    datasets.disable_progress_bar()
    rng = random.Random(0)
    prompts = datasets.Dataset.from_dict({"prompt": [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(PROMPTS)]})
    config, trainer_class = getattr(trl, f"{kind}Config"), getattr(trl, f"{kind}Trainer")
    args = config(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                  gradient_accumulation_steps=accumulation, num_iterations=iterations, max_completion_length=3, beta=0.0,
                  num_train_epochs=1, use_cpu=True, report_to="none", save_strategy="no", logging_strategy="epoch",
                  disable_tqdm=True, seed=0, dataloader_num_workers=0)
    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0)
    trainer = trainer_class(model=_tiny_llama(), reward_funcs=_reward, args=args, train_dataset=prompts,
                            processing_class=_tokenizer(), callbacks=[callback])
    trained = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        trained.append(int(inputs["completion_ids"].shape[0]))
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trained and set(trained) == {4}
    (record,) = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert (record.samples, record.samples_counted) == (sum(trained), True)
    assert not [w for w in caught if issubclass(w.category, EnergyWarning) and "count the samples" in str(w.message)]
