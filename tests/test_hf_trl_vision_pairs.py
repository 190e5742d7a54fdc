"""TRL's DPO vision collator (``DataCollatorForVisionPreference``) stacks each pair's chosen and
rejected rows, images repeated, as DPO's text collator does: a pair is one sample. It was left out
of that rule, so a vision DPO run counted 2 per pair: 10 pairs trained were 20 samples, 7
evaluated 14, where HF's own ``train_samples_per_second`` counts 10. Everything is built here, a
tiny LLaVA processor and model included: no download."""

from __future__ import annotations

import copy
import random
import warnings

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

from greencallbacks.hf import EnergyCallback, _rows_per_pair  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.samples import BatchCounter  # noqa: E402
from tests.test_hf_trl import EOS, PAD, WORDS, _tokenizer, _trl  # noqa: E402

IMAGE_SIDE, PATCH = 8, 4


def _vision_collator():
    trl = _trl()
    try:
        from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
    except ImportError:
        pytest.skip(f"TRL {trl.__version__} has no DataCollatorForVisionPreference")
    return DataCollatorForVisionPreference


def _processor(kind=None):
    """A LLaVA processor of the word-level test tokenizer and an 8 x 8 image processor: an image is
    4 image tokens."""
    import transformers

    kind = kind or transformers.LlavaProcessor
    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    side = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    return kind(image_processor=images(size={"shortest_edge": IMAGE_SIDE}, crop_size=side),
                tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
                num_additional_image_tokens=1, image_token="<image>")


def _image():
    from PIL import Image

    return Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE))


def _pairs(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return {"images": [[_image()] for _ in range(n)], "prompt": ["<image> " + words(3) for _ in range(n)],
            "chosen": [words(2) for _ in range(n)], "rejected": [words(3) for _ in range(n)]}


def test_a_vision_dpo_pair_counts_one_sample():
    collator = _vision_collator()(_processor())
    counter = BatchCounter()
    counter.collate, counter.rows_per_sample = "rows", _rows_per_pair(collator)
    pairs = _pairs(3, 0)
    batch = collator([{key: pairs[key][i] for key in pairs} for i in range(3)])
    assert tuple(batch["input_ids"].shape)[0] == tuple(batch["pixel_values"].shape)[0] == 6  # chosen, then rejected
    assert counter.rows_per_sample == 2
    assert counter.count(batch) == (3, 0)


def test_a_processor_that_refuses_a_pair_without_an_image_still_counts_pairs():
    """The layout is read from the collator on two pairs without an image; a processor that wants
    one is taken at the collator's own rule (TRL 1.x stacks chosen and rejected)."""
    import transformers

    class WantsAnImage(transformers.LlavaProcessor):
        def __call__(self, images=None, text=None, **kwargs):
            if images is None and kwargs.get("padding_side") == "left":
                raise ValueError("an image is required")
            return super().__call__(images=images, text=text, **kwargs)

    assert _rows_per_pair(_vision_collator()(_processor(WantsAnImage))) == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_vision_dpo_trainer_counts_its_pairs(tmp_path):
    trl = _trl()
    _vision_collator()
    import datasets
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    datasets.disable_progress_bar()
    processor = _processor()
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=IMAGE_SIDE, patch_size=PATCH, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(processor.tokenizer), hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=3),
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1))
    args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                         num_train_epochs=1, use_cpu=True, report_to="none", save_strategy="no", logging_strategy="epoch",
                         eval_strategy="epoch", disable_tqdm=True, seed=0, dataloader_num_workers=0, max_length=32)
    trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, processing_class=processor,
                             train_dataset=datasets.Dataset.from_dict(_pairs(10, 0)),
                             eval_dataset=datasets.Dataset.from_dict(_pairs(7, 1)),
                             callbacks=[EnergyCallback(output_dir=tmp_path, intensity=100.0)])
    assert type(trainer.data_collator).__name__ == "DataCollatorForVisionPreference"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    records = [r for r in read_records(tmp_path) if r.phase in ("train", "validation")]
    assert [(r.phase, r.samples, r.samples_counted) for r in records] == [("train", 10, True), ("validation", 7, True)]
    assert not [w for w in caught if issubclass(w.category, EnergyWarning) and "count the samples" in str(w.message)]
