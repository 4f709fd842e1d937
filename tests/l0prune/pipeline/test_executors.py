"""Layer solves on a dask cluster and a process pool: the same model bit for bit as in this
process, a worker killed mid-run, and executors that cannot serve."""

import concurrent.futures as cf
import copy
import os

import pytest
import torch

import l0prune
from l0prune.pipeline.executors import join_cluster, layer_solves, local_cluster
from solvers.many import WorkerLost
from tests.l0prune.pipeline.test_blockwise import tiny, token_batches

distributed = pytest.importorskip("distributed")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_run(model_a, report_a, model_b, report_b):
    """Masks and weights bit for bit, and the same per-layer figures."""
    a, b = _state(model_a), _state(model_b)
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [(x.name, x.kept, x.relative_error) for x in report_a.layers] == [
        (x.name, x.kept, x.relative_error) for x in report_b.layers]
    assert report_a.sparsity == report_b.sparsity > 0


def _digits(fixture):
    model, data = fixture
    calibration = [batch for _, batch in zip(range(2), data.loader("train"), strict=False)]
    return model, calibration


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("sequential", [False, True])
def test_a_dask_cluster_gives_the_in_process_model_bit_for_bit(
        dask_client, kind, sequential, digits_mlp_trained, digits_cnn_trained):
    model, calibration = _digits(digits_mlp_trained if kind == "mlp" else digits_cnn_trained)
    settings = dict(sparsity=0.6, method="admm", sequential=sequential, progress=False,
                    options={"max_iter": 30})
    here, there = copy.deepcopy(model), copy.deepcopy(model)
    expected = l0prune.prune(here, calibration, **settings)
    found = l0prune.prune(there, calibration, executor=dask_client, **settings)
    _assert_same_run(here, expected, there, found)
    assert found.calibration_passes == expected.calibration_passes


@pytest.mark.parametrize("sequential", [False, True])
def test_a_bert_block_by_block_on_the_cluster_matches_in_process(dask_client, bert, tokens,
                                                                 sequential):
    settings = dict(sparsity=0.5, method="obs", sequential=sequential, progress=False)
    other = copy.deepcopy(bert)
    expected = l0prune.prune(bert, tokens, **settings)
    found = l0prune.prune(other, tokens, executor=dask_client.get_executor(), **settings)
    assert found.blocks == expected.blocks == "encoder.layer, 2 blocks"
    _assert_same_run(bert, expected, other, found)


def test_a_process_pool_gives_the_same_model(digits_cnn_trained, process_pool):
    model, calibration = _digits(digits_cnn_trained)
    settings = dict(sparsity=0.6, method="obs", sequential=True, progress=False)
    here, there = copy.deepcopy(model), copy.deepcopy(model)
    expected = l0prune.prune(here, calibration, **settings)
    found = l0prune.prune(there, calibration, executor=process_pool, **settings)
    _assert_same_run(here, expected, there, found)


def _die_once_on_workers(client, marker: str) -> None:
    """On every worker, the first layer solve anywhere ends its worker's process (a crash);
    the others run as usual. The worker restarted by its nanny is a fresh process."""

    def install(marker=marker):
        import l0prune.pipeline.solves as jobs

        solve = jobs.solve

        def crash_first(*args, **kwargs):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return solve(*args, **kwargs)
            os._exit(1)

        jobs.solve = crash_first

    client.run(install)


def test_a_worker_killed_mid_run_has_its_layer_solved_again(dask_client, tmp_path,
                                                            digits_mlp_trained):
    model, calibration = _digits(digits_mlp_trained)
    settings = dict(sparsity=0.6, method="obs", sequential=False, progress=False)
    here, there = copy.deepcopy(model), copy.deepcopy(model)
    expected = l0prune.prune(here, calibration, **settings)
    _die_once_on_workers(dask_client, str(tmp_path / "died"))
    found = l0prune.prune(there, calibration, executor=dask_client, **settings)
    assert (tmp_path / "died").exists()  # a worker did die
    _assert_same_run(here, expected, there, found)
    dask_client.wait_for_workers(2, timeout=60)


def test_with_no_retries_a_killed_worker_fails_naming_the_layer_and_the_model_is_unchanged(
        dask_client, tmp_path, digits_mlp_trained):
    model, calibration = _digits(digits_mlp_trained)
    before = _state(model)

    def allowed(dask_scheduler, value):
        old, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, value
        return old

    dask_client.wait_for_workers(2, timeout=60)
    _die_once_on_workers(dask_client, str(tmp_path / "died"))
    old = dask_client.run_on_scheduler(allowed, value=0)
    try:
        with pytest.raises(WorkerLost) as info:
            l0prune.prune(model, calibration, sparsity=0.6, method="obs", sequential=False,
                          progress=False, executor=dask_client)
    finally:
        dask_client.run_on_scheduler(allowed, value=old)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert info.value.label in ("layer '1'", "layer '3'") and message.startswith(info.value.label)
    assert "KilledWorker" in message
    assert l0prune.masks_of(model) == {}
    after = _state(model)
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    dask_client.wait_for_workers(2, timeout=60)


def test_an_exception_in_a_task_comes_back_as_raised_here(dask_client, digits_mlp_trained):
    model, calibration = _digits(digits_mlp_trained)
    before = _state(model)
    with pytest.raises(ValueError, match="unknown option") as info:
        l0prune.prune(model, calibration, sparsity=0.5, method="obs", sequential=False,
                      options={"no_such_option": 1}, progress=False, executor=dask_client)
    assert any("layer '1'" in note or "layer '3'" in note for note in info.value.__notes__)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_executors_that_cannot_serve_are_refused_in_one_line(mlp):
    model, data = mlp
    calibration = [next(iter(data.loader("train")))]
    with pytest.raises(ValueError, match="executor must be None, a concurrent.futures.Executor"):
        l0prune.prune(model, calibration, sparsity=0.5, executor="localhost:8786")
    pool = cf.ThreadPoolExecutor(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        l0prune.prune(model, calibration, sparsity=0.5, method="wanda", progress=False,
                      executor=pool)
    assert l0prune.masks_of(model) == {}


def test_a_closed_client_is_refused_before_any_work(dask_client):
    client = distributed.Client(dask_client.scheduler.address)
    client.close()
    with pytest.raises(ValueError) as info:
        layer_solves(client)
    assert "the dask client is closed" in str(info.value)


def test_an_unreachable_scheduler_is_one_line(monkeypatch):
    monkeypatch.setattr("l0prune.pipeline.executors.CONNECT_TIMEOUT", 1)
    with pytest.raises(ValueError) as info, join_cluster("tcp://127.0.0.1:9"):
        pass
    assert str(info.value).startswith("scheduler tcp://127.0.0.1:9 cannot be reached within 1 s")
    assert len(str(info.value).splitlines()) == 1


def test_local_cluster_checks_its_arguments():
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        with local_cluster(0):
            pass
    with pytest.raises(ValueError, match="retries must be an integer >= 0, got -1"):
        with local_cluster(1, retries=-1):
            pass


def test_local_cluster_workers_keep_glibcs_adaptive_allocator():
    """dask's MALLOC_TRIM_THRESHOLD_ would map every large temporary of a solve afresh (2.5x
    slower solves); the one-thread settings stay."""
    pytest.importorskip("distributed")
    with local_cluster(1) as client:
        found = client.run(lambda: {k: os.environ.get(k) for k in (
            "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")})
    assert list(found.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]


def test_the_alpha_search_on_the_cluster_takes_the_same_path(dask_client, digits_mlp_trained):
    model, calibration = _digits(digits_mlp_trained)
    validation = [next(iter(digits_mlp_trained[1].loader("val")))]
    settings = dict(alpha=1.05, validation=validation, method="obs", progress=False)
    here, there = copy.deepcopy(model), copy.deepcopy(model)
    expected = l0prune.prune(here, calibration, **settings)
    found = l0prune.prune(there, calibration, executor=dask_client, **settings)
    assert any(t.stage == "allocated" for t in expected.trials)  # the error curves ran
    assert [(t.stage, t.target, t.sparsity, t.loss) for t in found.trials] == [
        (t.stage, t.target, t.sparsity, t.loss) for t in expected.trials]
    _assert_same_run(here, expected, there, found)


class _Immediate(cf.Executor):
    """Runs each task as it is submitted (in this process) and counts them."""

    def __init__(self):
        self.submitted = 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        future = cf.Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_block_by_block_hands_every_blocks_solves_out_before_it_waits(monkeypatch):
    """A block's largest layer once held the workers up: without sequential statistics the
    blocks' solves go out as their statistics are taken and come back at the end."""
    from l0prune.pipeline import blockwise

    waited_for = []
    finish = blockwise.BlockPruner._finish

    def recorded(self, pending, checkpoint):
        if pending:
            waited_for.append(len(pending))
        return finish(self, pending, checkpoint)

    monkeypatch.setattr(blockwise.BlockPruner, "_finish", recorded)
    model, data = tiny("llama", 3), token_batches()
    twin = copy.deepcopy(model)
    executor = _Immediate()
    found = l0prune.prune(model, data, sparsity=0.5, method="obs", sequential=False,
                          executor=executor, progress=False)
    assert waited_for == [3] and executor.submitted == 3 * 7  # 7 layers a LLaMA block
    expected = l0prune.prune(twin, data, sparsity=0.5, method="obs", sequential=False,
                             progress=False)
    _assert_same_run(twin, expected, model, found)
