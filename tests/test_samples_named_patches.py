"""A model's named input decides a batch whose fields disagree, but Qwen-VL's ``pixel_values`` of
2 dimensions are every image's patches, one row each (beside ``image_grid_thw``), not samples.

TRL's GRPO trains on micro-batches with ``prompt_ids`` and ``completion_ids`` and no ``input_ids``:
with a vision-language model, its pixel values named the count, 256 for 4 completions of one image
of 64 patches each, marked exact. Built by hand as TRL's ``_generate_and_score_completions``
returns it, so the core's CI checks it without TRL.
"""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")

from greencallbacks.samples import count_samples  # noqa: E402

B, PATCHES = 4, 64


def _grpo_slice(**extra):
    batch = {"prompt_ids": np.zeros((B, 7), dtype=np.int64), "prompt_mask": np.ones((B, 7)),
             "completion_ids": np.zeros((B, 3), dtype=np.int64), "completion_mask": np.ones((B, 3)),
             "advantages": np.zeros(B), "num_items_in_batch": np.array(12)}
    batch.update(extra)
    return batch


@pytest.mark.parametrize("collate", ["rows", None])
@pytest.mark.parametrize("images", [
    {"pixel_values": np.zeros((PATCHES * B, 1176)), "image_grid_thw": np.array([[1, 8, 8]] * B), "num_images": [1] * B},
    {"pixel_values": np.zeros((2 * B, 1176)), "image_grid_thw": np.array([[1, 1, 2]] * B), "num_images": [1] * B},
    {"pixel_values": np.zeros((B, 3, 16, 16))},  # LLaVA's images: one per sample
    {},
])
def test_a_grpo_micro_batch_counts_its_completions_not_its_patches(images, collate):
    assert count_samples(_grpo_slice(**images), collate) == B


def test_patches_without_a_named_input_beside_them_are_uncounted():
    batch = {"pixel_values": np.zeros((PATCHES * B, 1176)), "image_grid_thw": np.array([[1, 8, 8]] * B),
             "labels": np.zeros(B)}
    assert count_samples(batch, "rows") is None  # counted 256, as exact


def test_input_ids_still_count_a_vision_language_batch():
    batch = {"input_ids": np.zeros((B, 9), dtype=np.int64), "attention_mask": np.ones((B, 9)),
             "pixel_values": np.zeros((PATCHES * B, 1176)), "image_grid_thw": np.array([[1, 8, 8]] * B),
             "labels": np.zeros((B, 9))}
    assert count_samples(batch, "rows") == B
