"""``greencallbacks demo``: train a small MLP on synthetic data with the Lightning callback, then report.

Runs on the CPU in seconds and needs no download. It shows what a user of the callback gets: the
per-epoch values in a logger (a CSV here), the records, and a Markdown report that says plainly
which numbers are measured and which are estimated.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from greencallbacks import extras, report
from greencallbacks.records import RECORDS_FILE, Record, read_records
from greencallbacks.session import EnergySession
from greencallbacks.textformat import energy_text, mass_text

REPORT_FILE = "energy-report.md"


@dataclass
class DemoResult:
    records: list[Record]
    summary: dict
    table: str  # the per-epoch table that was printed
    output_dir: Path
    report_path: Path


def run_demo(
    output_dir: str | os.PathLike = "greencallbacks-out",
    epochs: int = 5,
    *,
    samples: int = 4096,
    features: int = 32,
    hidden: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    quiet: bool = False,
    **energy_settings: Any,
) -> DemoResult:
    """Train, measure, print the per-epoch table, and write records and a report to ``output_dir``.

    ``energy_settings`` go to the callback (``country=``, ``zone=``, ``region=``, ``intensity=``,
    ``pue=``, ...). Returns the records, the run summary and where the report is.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    EnergySession(**energy_settings)  # bad settings fail first, with or without the frameworks
    try:
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        import lightning.pytorch as L
        from lightning.pytorch.loggers import CSVLogger
    except ImportError as error:
        raise extras.missing(error, "the demo", ("torch", "lightning"), extras.LIGHTNING) from None
    from greencallbacks.lightning import EnergyCallback

    output_dir = Path(output_dir)
    callback = EnergyCallback(output_dir=output_dir, progress_bar=False, **energy_settings)

    # A regression task a small MLP can learn: y = sin(x . w) plus noise.
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    w = torch.randn(features, 1, generator=generator) / features**0.5
    y = torch.sin(x @ w) + 0.05 * torch.randn(samples, 1, generator=generator)
    split = samples * 4 // 5
    train = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=batch_size, shuffle=True, generator=generator)
    val = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=batch_size)

    class MLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                torch.nn.Linear(hidden, 1),
            )

        def forward(self, inputs):
            return self.net(inputs)

        def _loss(self, batch):
            inputs, targets = batch
            return torch.nn.functional.mse_loss(self(inputs), targets)

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self._loss(batch))

        def test_step(self, batch, batch_idx):
            self.log("test_loss", self._loss(batch))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(seed)
    model = MLP()
    with _lightning_quiet():
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=CSVLogger(output_dir, name="lightning-logs"),
            callbacks=[callback],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, train, val)
        trainer.test(model, val, verbose=False)  # inference cost per sample (I in the life-cycle model)

    # The directory may hold earlier runs' records: report this one.
    records = [r for r in read_records(output_dir) if r.run_id == callback.tracker.run_id]
    table = report.format_epoch_table(records)
    report_path = output_dir / REPORT_FILE
    report_path.write_text(report.render_markdown(records), encoding="utf-8")
    summary = _summary(output_dir)
    if not quiet:
        print(f"greencallbacks demo: {epochs} epochs of a {features}-{hidden}-{hidden}-1 MLP on {split} synthetic samples (CPU)\n")
        print(table)
        print()
        for note in report.provenance(records):
            print(f"- {note}")
        print(f"\nTotal: {energy_text(summary.get('energy_kwh', 0.0))}, {mass_text(summary.get('co2eq_g', 0.0))}")
        print(f"Records: {output_dir / RECORDS_FILE}\nReport:  {report_path}\nLogged metrics: {trainer.logger.log_dir}/metrics.csv")
    return DemoResult(records=records, summary=summary, table=table, output_dir=output_dir, report_path=report_path)


def _summary(output_dir: Path) -> dict:
    import json

    from greencallbacks.tracker import SUMMARY_FILE

    try:
        return json.loads((output_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@contextmanager
def _lightning_quiet() -> Iterator[None]:
    """Lightning's start-up banners would bury the table; its warnings still show."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
