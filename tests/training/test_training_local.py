"""The training layer in one process: ModelRef hand-off, the loader's order rules, inference, imports."""
from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
import torch
from mpi4py import MPI

from parsl_rcylon.context import CylonContext
from parsl_rcylon.training import LoaderError, ModelCorruptError, ModelError, ModelRef, predict
from parsl_rcylon.training.loader import default_block_size, even_split, steps_per_epoch


def make_ctx(tmp_path, task_id: str = "t1") -> CylonContext:
    return CylonContext(MPI.COMM_SELF, task_id=task_id, name="train", data_dir=str(tmp_path / "data"))


def test_import_does_not_load_torch() -> None:
    code = "import sys, parsl_rcylon, parsl_rcylon.training; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_model_round_trip(tmp_path) -> None:
    ctx = make_ctx(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    ref = ctx.save_model(model, optimizer=opt, meta={"epochs": 3, "loss": [0.5, 0.4]}, extra={"epoch": 3})
    ref = pickle.loads(pickle.dumps(ref))
    assert len(pickle.dumps(ref)) < 4096, "a ModelRef should be small"
    assert ref.meta == {"epochs": 3, "loss": [0.5, 0.4]}
    assert ref.path.startswith(str(tmp_path / "data" / "models"))
    assert stat.S_IMODE(os.stat(ref.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "models").st_mode) == 0o700
    for name in os.listdir(ref.path):
        assert stat.S_IMODE(os.stat(os.path.join(ref.path, name)).st_mode) == 0o600, name
    assert sorted(os.listdir(ref.path)) == ["model.json", "model.pt"], "a temporary file was left"
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    payload = ref.load_into(fresh, optimizer=fresh_opt)
    assert payload["epoch"] == 3
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert ModelRef.open(ref.path) == ref
    # A second save of the same task never overwrites the first.
    again = ctx.save_model(model)
    assert again.path != ref.path and os.path.exists(ref.file)


def test_corrupt_model_refused(tmp_path) -> None:
    ctx = make_ctx(tmp_path)
    ref = ctx.save_model(torch.nn.Linear(16, 16))
    with open(ref.file, "r+b") as f:
        f.seek(ref.nbytes // 2)
        byte = f.read(1)
        f.seek(ref.nbytes // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelCorruptError, match="SHA-256") as info:
        ref.load()
    assert ref.file in str(info.value)
    with open(ref.file, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ModelCorruptError, match="10 bytes") as info:
        ref.load_into(torch.nn.Linear(16, 16))
    assert ref.file in str(info.value)
    os.unlink(ref.file)
    with pytest.raises(ModelCorruptError, match="missing"):
        ref.load()
    with pytest.raises(ModelError, match="no model manifest"):
        ModelRef.open(str(tmp_path))


def test_model_file_cannot_run_code(tmp_path) -> None:
    """A file whose checksum matches but holds arbitrary pickled objects is refused (weights_only)."""
    from parsl_rcylon.training.model import write_model

    ref = write_model(str(tmp_path), "evil", {"model": Fraction(1, 3)})
    with pytest.raises(ModelCorruptError, match="cannot load"):
        ref.load()


def test_save_model_needs_data_dir(tmp_path) -> None:
    ctx = CylonContext(MPI.COMM_SELF, task_id="t", name="x")
    with pytest.raises(ModelError, match="no data_dir"):
        ctx.save_model(torch.nn.Linear(2, 1))


def test_order_rules() -> None:
    assert default_block_size(1024) == 64 and default_block_size(1000) == 50 and default_block_size(7) == 1
    assert even_split(10, 3).tolist() == [3, 3, 4]
    assert steps_per_epoch([100, 250], 100, drop_last=False) == 3
    assert steps_per_epoch([100, 250], 100, drop_last=True) == 1


def test_loader_fully_random_and_views(tmp_path) -> None:
    ctx = make_ctx(tmp_path)
    n = 3001
    table = pa.table({"id": np.arange(n, dtype=np.float32), "y": np.ones(n, dtype=np.float32)})
    loader = ctx.torch_loader(table, features=["id"], label="y", batch_size=64, block_size=1, seed=4)
    ids = np.concatenate([x[:, 0].numpy().copy() for x, _ in loader]).astype(np.int64)
    assert np.array_equal(np.sort(ids), np.arange(n))
    # Fully random: adjacent rows of the epoch are rarely adjacent in the table.
    assert np.mean(np.abs(np.diff(ids)) == 1) < 0.01
    with pytest.raises(LoaderError, match="TableRef, pyarrow.Table"):
        ctx.torch_loader([1, 2, 3], features=["id"])


def test_predict_in_row_order() -> None:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.zero_()
    table = pa.table({"a": np.arange(10, dtype=np.float32), "b": np.ones(10, dtype=np.float32)})
    out = predict(model, table, ["a", "b"], batch_size=3)
    assert out.shape == (10,) and np.allclose(out, np.arange(10) + 2.0)


def test_timeout_from_the_task() -> None:
    from types import SimpleNamespace

    from parsl_rcylon.training import ProcessGroupError
    from parsl_rcylon.training.process_group import DEFAULT_TIMEOUT, resolve_timeout

    assert resolve_timeout({}, None) == DEFAULT_TIMEOUT
    assert resolve_timeout({"walltime": 90}, None) == 90.0
    assert resolve_timeout(SimpleNamespace(walltime=45.0), None) == 45.0  # a typed options object
    assert resolve_timeout({"walltime": 90}, 5) == 5.0
    with pytest.raises(ProcessGroupError, match="positive"):
        resolve_timeout({}, 0)
