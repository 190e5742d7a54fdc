"""``embodied={"ram_gb": ...}`` is the host's memory: billed once per host, like the host, by the
rank that measures its CPU and RAM, not once by every rank of a distributed run."""

from __future__ import annotations

import pytest

from greencallbacks.embodied import amortised_g, embodied_for, estimate_embodied, footprints

H100 = "NVIDIA H100 80GB HBM3"


def _ranks(n: int) -> list[list[dict]]:
    """One host, n ranks: rank 0 measures the host's CPU and RAM, every rank its own GPU."""
    host = [{"name": "cpu", "kind": "cpu"}, {"name": "ram", "kind": "ram"}]
    return [[{"name": f"gpu{i}", "kind": "gpu", "model": H100}] + (host if i == 0 else []) for i in range(n)]


def test_eight_ranks_on_one_host_bill_its_memory_once():
    dram = footprints()["dram"].kgco2eq
    h100 = footprints()["H100 SXM"].kgco2eq
    per_rank = [embodied_for(components, 3600, ram_gb=512) for components in _ranks(8)]
    # 8 GPUs and one host's 512 GB: the memory was billed by all 8 ranks (8 x 512 GB).
    assert sum(r.grams for r in per_rank) == pytest.approx(amortised_g(8 * h100 + 512 * dram, 3600))
    gpu_rank = per_rank[1]
    assert [s["key"] for s in gpu_rank.sources if "kgco2eq" in s] == ["H100 SXM"]
    assert gpu_rank.missing == ("ram_gb=512: not billed with these components (no cpu or ram among them); "
                                "billed where the host is measured",)
    assert [s["key"] for s in per_rank[0].sources if "kgco2eq" in s] == ["H100 SXM", "dram"]


def test_with_the_host_too_each_is_billed_once():
    per_rank = [embodied_for(components, 3600, host="server", host_share=0.5, ram_gb=64) for components in _ranks(4)]
    expected = amortised_g(4 * footprints()["H100 SXM"].kgco2eq + 0.5 * 2500 + 64 * footprints()["dram"].kgco2eq, 3600)
    assert sum(r.grams for r in per_rank) == pytest.approx(expected)


def test_an_estimate_still_bills_the_memory_given():
    fields = estimate_embodied(hours=1, gpu="H100 SXM", ram_gb=64)
    assert fields["embodied_co2eq_g"] == pytest.approx(amortised_g(164 + 64 * 0.4, 3600))
    assert fields["embodied_missing"] == [
        "host machine of memory (chassis, board, CPUs, memory): not counted; pass host='server' and host_share= to bill it"
    ]
    with_host = estimate_embodied(hours=1, gpu="H100 SXM", host="server", ram_gb=64)
    assert with_host["embodied_co2eq_g"] == pytest.approx(amortised_g(164 + 2500 + 64 * 0.4, 3600))


def test_two_ranks_of_a_tracker_bill_the_hosts_memory_once(tmp_path):
    from tests.test_embodied_tracker import run_two_ranks

    results, _ = run_two_ranks(tmp_path, (H100, H100), {"ram_gb": 512})
    train = results[0].last["train"]
    per_second = amortised_g(2 * footprints()["H100 SXM"].kgco2eq + 512 * footprints()["dram"].kgco2eq, 1.0)
    assert train.embodied_co2eq_g == pytest.approx(per_second * train.duration_s)


@pytest.mark.parametrize("share", [0.5, 2])
def test_an_estimate_without_a_gpu_refuses_a_host_share_without_a_host(share):
    """With a GPU, ``estimate`` refused it; without one, the share was ignored, unsaid."""
    from greencallbacks.estimate import estimate

    with pytest.raises(ValueError, match=rf"host_share needs embodied_host .*host_share={share}"):
        estimate(hours=1, cpu_cores=8, host_share=share)
    assert estimate(hours=1, cpu_cores=8, host_share=1.0)["embodied"] is None
