"""The device benchmark's CPU path at a tiny size: the same device twice agrees exactly."""

import pytest
import torch

from l0prune.bench import gpu


def test_cpu_against_cpu_agrees_exactly():
    cpu = torch.device("cpu")
    rows = gpu.run([(48, 16)], [cpu, cpu], sparsity=0.5)
    assert [(r["method"], r["device"]) for r in rows] == [
        ("obs", "cpu"), ("obs", "cpu"), ("admm", "cpu"), ("admm", "cpu")]
    assert all(r["agreement"] == 1.0 and r["error_ratio"] == 1.0 for r in rows)
    assert 0 < rows[0]["relative_error"] < 1
    assert rows[2]["relative_error"] <= rows[0]["relative_error"]  # ADMM below OBS
    assert gpu.table(rows).count("| yes |") == 4


def test_agreement_counts_shared_kept_weights():
    reference = torch.tensor([[True, True, False, False]])
    assert gpu.agreement(torch.tensor([[True, False, True, False]]), reference) == 0.5
    assert not gpu._passes({"agreement": 0.98, "error_ratio": 1.0})
    assert not gpu._passes({"agreement": 1.0, "error_ratio": 1.02})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_asking_for_cuda_without_it_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--quick", "--devices", "cpu", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA device is available" in capsys.readouterr().err
