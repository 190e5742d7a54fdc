"""Batch kinds that both the sample counter's unit tests and its framework tests feed it."""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class Features:
    pixels: torch.Tensor
    label: torch.Tensor


Pair = namedtuple("Pair", "inputs targets")
