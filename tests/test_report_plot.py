"""The report's figure (report/plot.py)."""

import pytest

from greencallbacks.records import Record
from greencallbacks.report.plot import epoch_figure

KWH = 3.6e6


def rec(run_id, phase, epoch, energy_j, samples, seq):
    return Record(
        run_id=run_id, phase=phase, epoch=epoch, seq=seq, start_time="2026-11-23T10:00:00+00:00",
        duration_s=2.0, samples=samples, it_energy_kwh=energy_j / KWH, energy_kwh=energy_j / KWH,
        co2eq_g=energy_j / KWH * 300.0, intensity_gco2eq_per_kwh=300.0, intensity_source="user-supplied intensity",
        intensity_zone="user", pue=1.2, energy_j_per_sample=energy_j / samples if samples else None,
        co2eq_g_per_sample=None,
        components=[{"name": name, "kind": name, "method": method, "energy_j": energy_j / 3, "uncertainty_j": 0.0}
                    for name, method in (("gpu", "counter"), ("cpu", "estimated"), ("ram", "estimated"))],
    )


def run(run_id, epochs, samples):
    records, seq = [], 0
    for epoch in range(epochs):
        records.append(rec(run_id, "train", epoch, 9.0, samples, seq)); seq += 1
        records.append(rec(run_id, "validation", epoch, 0.3, 16, seq)); seq += 1
    return records


def test_several_configurations_have_their_description_whole_inside_the_figure():
    """Each panel's title names its configuration; unwrapped, the description ran past both edges
    of the image, and what tells the panels apart (the epochs, the samples) was cut off."""
    pytest.importorskip("matplotlib")
    figure = epoch_figure(run("a", 3, 32) + run("b", 2, 64))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    titles = [axes.title for axes in figure.axes if axes.get_xlabel() == "epoch"]
    assert len(titles) == 2
    for title, epochs, samples in zip(titles, (3, 2), (32, 64)):
        assert f"{epochs} training epoch(s) of {samples} samples" in title.get_text().replace("\n", " ")
        box = title.get_window_extent(renderer)
        assert box.x0 >= figure.bbox.x0 and box.x1 <= figure.bbox.x1, title.get_text()
        assert box.y0 >= figure.bbox.y0 and box.y1 <= figure.bbox.y1


def test_one_configuration_has_no_description_in_its_title():
    pytest.importorskip("matplotlib")
    figure = epoch_figure(run("a", 3, 32))
    assert figure.axes[0].get_title() == "Energy per epoch and cumulative CO2eq"


def test_checking_a_plot_path_leaves_a_link_and_refuses_a_fifo_without_blocking(tmp_path):
    """The write test opened the path for appending: a link whose target was missing became a
    plain file (its target made empty, the link removed), and a FIFO blocked for ever."""
    pytest.importorskip("matplotlib")  # check_plot_path asks for it first
    import os

    from greencallbacks.report.plot import check_plot_path

    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "target.png")
    check_plot_path(link)
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "target.png")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="cannot be written"):
        check_plot_path(fifo)
