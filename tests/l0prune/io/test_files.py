"""Every safetensors file l0prune writes follows the umask, as its other files do (the
safetensors library alone writes them 0600)."""

import os
import stat

import pytest
import torch
from torch import nn

import l0prune
from l0prune.io.problem_files import save_problems, solve_folder
from tests.l0prune import tiny_hf


@pytest.fixture(params=[0o022, 0o027])
def mask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _modes(folder):
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*.safetensors")}


def test_exports_and_problem_folders_follow_the_umask(tmp_path, mask):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [torch.randn(32, 8)]
    save_problems(model, data, tmp_path / "p", sparsity=0.5, progress=False)
    solve_folder(tmp_path / "p", "magnitude", show_progress=False)
    l0prune.prune(model, data, sparsity=0.5, method="magnitude", progress=False)
    l0prune.export(model, tmp_path / "m.safetensors", tmp_path / "m.sparse.safetensors")
    modes = _modes(tmp_path)
    assert sorted(modes) == ["m.safetensors", "m.sparse.safetensors",
                             "p/moments/0000.safetensors", "p/problems/0000.safetensors",
                             "p/solutions/0000.safetensors"]
    assert set(modes.values()) == {0o666 & ~mask}


@pytest.mark.parametrize("format", ["dense", "compressed"])
def test_hugging_face_folders_follow_the_umask(tmp_path, mask, format):
    pytest.importorskip("transformers")
    l0prune.save_pretrained(tiny_hf.model("gpt2"), tmp_path, format=format)
    modes = _modes(tmp_path)
    assert len(modes) == 1 and set(modes.values()) == {0o666 & ~mask}


def test_resume_checkpoints_follow_the_umask(tmp_path, mask):
    pytest.importorskip("transformers")
    data = [{"input_ids": torch.randint(0, tiny_hf.VOCAB, (2, 8))}]
    l0prune.prune(tiny_hf.model("llama"), data, sparsity=0.5, method="magnitude",
                  checkpoint=tmp_path, progress=False)
    modes = _modes(tmp_path)
    assert sorted(modes) == ["block-0000.safetensors", "block-0001.safetensors"]
    assert set(modes.values()) == {0o666 & ~mask}
