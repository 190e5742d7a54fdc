"""Read the history of an offline W&B run from its ``.wandb`` file (test helper).

wandb 0.31 writes the run as a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs and
no longer ships a Python reader, so this is the few lines of that format: a 7-byte file header
(``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32c,
little-endian length, type FULL/FIRST/MIDDLE/LAST).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # a block tail too short for a header is padding
            pos += left_in_block
            continue
        start = pos
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if pos + 7 + length > len(data):
            return  # a chunk W&B's service is still writing (read while the run is open): not yet a record
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:  # zero padding up to the end of the block
            pos = (start // BLOCK + 1) * BLOCK


def read_history(run_file: str | Path) -> list[dict]:
    """Every history row logged to the run, as ``{key: value}`` including ``_step``."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for payload in _payloads(Path(run_file).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def read_history_with(run_file: str | Path, key: str, rows: int, timeout_s: float = 20.0) -> list[dict]:
    """The run's history once ``rows`` rows carry ``key``.

    W&B's service process writes the file asynchronously; on a loaded machine the last rows can
    land a moment after ``wandb.finish()`` returns. Returns what is there at the deadline, so a
    test that expects more still fails.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        history = read_history(run_file)
        if sum(key in row for row in history) >= rows or time.monotonic() > deadline:
            return history
        time.sleep(0.1)


def run_files(wandb_dir: str | Path) -> list[Path]:
    return sorted(Path(wandb_dir).rglob("run-*.wandb"))
