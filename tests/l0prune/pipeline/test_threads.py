"""Thread counts: the CPUs a process may use (affinity, cgroup quota, load) cap the default."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import l0prune
from l0prune.pipeline import threads


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_the_cap_follows_affinity():
    code = (
        "import os, torch; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "torch.set_num_threads(os.cpu_count()); from l0prune.pipeline import threads; "
        "print(threads.available_cpus(), threads.default_threads())"
    )  # torch's count as on a machine where it sees every core, the process held to one
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["1", "1"]


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None


def test_quota_and_load_cap_the_default(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.5)
    assert threads.available_cpus() == 3  # a partial CPU still runs a thread
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert threads.idle_cpus() == 3  # this process alone
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 1.0, 1.0))
    assert threads.idle_cpus() == 1  # two others busy
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 1.0, 1.0))
    assert threads.idle_cpus() == 1
    with threads.using_threads(None) as count:
        assert count == torch.get_num_threads() == 1


def test_prune_runs_on_the_threads_asked_and_reports_them():
    before = torch.get_num_threads()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
    seen = []
    model[0].register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    report = l0prune.prune(model, data, sparsity=0.5, method="wanda", progress=False, threads=2)
    assert report.threads == 2 and set(seen) == {2}
    assert torch.get_num_threads() == before
    assert "on 2 thread(s)" in report.summary()
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        l0prune.prune(model, data, sparsity=0.5, method="wanda", progress=False, threads=0)


def test_thread_bench_table_ratios_are_against_one_thread_in_the_same_load():
    from l0prune.bench.threads import table

    rows = [{"load": "none", "setting": "1", "threads": 1, "seconds": 2.0},
            {"load": "none", "setting": "l0prune default", "threads": 2, "seconds": 1.0},
            {"load": "busy loop", "setting": "1", "threads": 1, "seconds": 4.0},
            {"load": "busy loop", "setting": "l0prune default", "threads": 1, "seconds": 4.4}]
    lines = table(rows).splitlines()
    assert lines[3] == "| none | l0prune default | 2 | 1.00 | 0.50 |"
    assert lines[5] == "| busy loop | l0prune default | 1 | 4.40 | 1.10 |"


def test_a_count_the_user_set_is_kept(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "idle_cpus", lambda: 1)  # a busy machine
    monkeypatch.setattr(threads, "torch_default_counts", lambda: {4, 8})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)  # one torch picks itself: capped by the idle CPUs
        assert not threads.set_by_user() and threads.default_threads() == 1
        torch.set_num_threads(2)  # the user's: kept
        assert threads.set_by_user() and threads.default_threads() == 2
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
        report = l0prune.prune(model, data, sparsity=0.5, method="wanda", progress=False)
        assert report.threads == 2
        torch.set_num_threads(4)
        monkeypatch.setenv("OMP_NUM_THREADS", "4")  # set through the environment: the user's
        assert threads.set_by_user() and threads.default_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_torch_default_counts_read_the_topology(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for cpu, core in enumerate((0, 0, 1, 1)):  # two hyperthreads per core
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    assert threads.torch_default_counts(tmp_path) == {1, 2, 4}
    assert threads.torch_default_counts(tmp_path / "none") == {2, 4}
