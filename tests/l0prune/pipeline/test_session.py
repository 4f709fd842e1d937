"""The frame every run shares: threads taken and given back, the model captured before it
changes and put back exactly when the run fails, the report completed."""

import pytest
import torch
from torch import nn

from l0prune import PruneConfig, PruneReport
from l0prune.pipeline.session import RunSession


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()


def test_a_failed_run_gives_the_model_back_and_the_threads_too():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    objects = [id(p) for p in model.parameters()]
    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt), RunSession(model, PruneConfig(sparsity=0.5,
                                                                         threads=1), []):
        assert torch.get_num_threads() == 1 and not model.training
        with torch.no_grad():
            model[0].weight.zero_()
        raise KeyboardInterrupt
    assert torch.get_num_threads() == threads and model.training
    assert [id(p) for p in model.parameters()] == objects
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_run_that_ends_well_keeps_its_changes_and_completes_the_report():
    model = _model()
    config = PruneConfig(sparsity=0.5, threads=1, method="obs")
    with RunSession(model, config, []) as session:
        with torch.no_grad():
            model[0].weight.zero_()
        report = session.finish(PruneReport([], "obs", "unstructured", True))
    assert model.training and float(model[0].weight.detach().abs().sum()) == 0
    assert report.threads == 1 and report.config == config.to_dict()
