import os

import pytest
import torch
from safetensors.torch import save_file

from conftest import BNCNN, mlp
from valleys.core.checkpoint import (
    CheckpointError,
    check_model_signature,
    load_checkpoint,
    model_signature,
    save_checkpoint,
)


def test_roundtrip_nested_state_with_optimizer(tmp_path):
    model = BNCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 6, 6)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "n": 3,
        "xs": (1.5, None, "a"),
        "scalar": torch.tensor(2.0),
    }
    path = save_checkpoint(tmp_path / "c.safetensors", state, {"epoch": 7})
    loaded, header = load_checkpoint(path)
    assert header == {"epoch": 7}
    assert loaded["n"] == 3 and loaded["xs"] == (1.5, None, "a") and loaded["scalar"].dim() == 0
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v)
    opt2 = torch.optim.SGD(BNCNN().parameters(), lr=0.5)
    opt2.load_state_dict(loaded["optimizer"])  # int keys survive
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(
        opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary files left


def test_truncated_foreign_and_garbage_files_give_clear_errors(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.randn(1000)})
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a valleys checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "pickle.pt").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "pickle.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(3)})
    with pytest.raises(CheckpointError, match="cannot store"):
        save_checkpoint(path, {"w": torch.zeros(3), "bad": object()})
    assert torch.equal(load_checkpoint(path)[0]["w"], torch.ones(3))


def test_signature_check_names_the_difference():
    sig = model_signature(mlp(h=16))
    check_model_signature(sig, mlp(h=16))
    with pytest.raises(CheckpointError, match="shape mismatches.*'0.weight'"):
        check_model_signature(sig, mlp(h=8))
    with pytest.raises(CheckpointError, match="another architecture"):
        check_model_signature(sig, BNCNN())


def test_results_json_is_strict(tmp_path):
    import json
    import math

    import numpy as np

    from valleys.core.checkpoint import to_json_text, write_json

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    data = {
        "nll": float("nan"),
        "runs": [1.0, float("inf"), {"x": (-math.inf, 2)}],
        "np": np.float32("nan"),
        "npv": np.float64(0.5),
        "t": torch.tensor([1.0, float("nan")]),
        "ts": torch.tensor(float("-inf")),
        3: (np.int64(4), None),
    }
    path = tmp_path / "r.json"
    write_json(path, data)
    back = json.loads(path.read_text(), parse_constant=refuse)
    assert back == {
        "nll": None,
        "runs": [1.0, None, {"x": [None, 2]}],
        "np": None,
        "npv": 0.5,
        "t": [1.0, None],
        "ts": None,
        "3": [4, None],
    }
    assert json.loads(to_json_text([math.nan]), parse_constant=refuse) == [None]
    assert "\n" not in to_json_text({"a": [1, 2]})
