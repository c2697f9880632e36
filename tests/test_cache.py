"""The on-disk cache of generated arrays (valleys.core.cache) and MNIST-1D through it."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

from valleys.core import cache


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VALLEYS_CACHE", str(tmp_path / "c"))
    return tmp_path / "c"


def _maker(calls):
    def make():
        calls.append(1)
        rng = np.random.default_rng(0)
        return {"x": rng.standard_normal((50, 7)), "y": rng.integers(0, 10, 50)}

    return make


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VALLEYS_CACHE", str(tmp_path / "a"))
    assert cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("VALLEYS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "valleys"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir().parts[-2:] == (".cache", "valleys")


def test_second_load_comes_from_the_cache_bit_identical(own_cache):
    calls = []
    key = {"gen": "test", "n": 50}
    first = cache.cached_arrays("t", key, _maker(calls))
    second = cache.cached_arrays("t", key, _maker(calls))
    assert len(calls) == 1
    assert set(first) == set(second) == {"x", "y"}
    for k in first:
        assert first[k].dtype == second[k].dtype and first[k].tobytes() == second[k].tobytes()
    npz, sidecar = cache.entry_paths("t", key)
    meta = json.loads(sidecar.read_text())
    assert meta["key"] == key and len(meta["sha256"]) == 64
    assert not list(own_cache.glob("*.tmp")) and not list(own_cache.glob(".*"))  # no temporary left behind
    cache.cached_arrays("t", {"gen": "test", "n": 51}, _maker(calls))  # another key: another entry
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar", "missing-npz", "other-key"])
def test_a_corrupt_or_mismatched_entry_is_regenerated(own_cache, damage):
    calls = []
    key = {"gen": "test"}
    good = cache.cached_arrays("t", key, _maker(calls))
    npz, sidecar = cache.entry_paths("t", key)
    if damage == "flip":
        raw = bytearray(npz.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        npz.write_bytes(bytes(raw))
    elif damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "sidecar":
        sidecar.write_text("{not json")
    elif damage == "missing-npz":
        npz.unlink()
    else:
        meta = json.loads(sidecar.read_text())
        meta["key"] = {"gen": "else"}
        sidecar.write_text(json.dumps(meta))
    with pytest.warns(RuntimeWarning, match="regenerating"):
        again = cache.cached_arrays("t", key, _maker(calls))
    assert len(calls) == 2 and all(np.array_equal(good[k], again[k]) for k in good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.cached_arrays("t", key, _maker(calls))  # rewritten: valid again
    assert len(calls) == 2


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VALLEYS_CACHE", str(blocker / "sub"))
    calls = []
    with pytest.warns(RuntimeWarning, match="could not write"):
        out = cache.cached_arrays("t", {"k": 1}, _maker(calls))
    assert len(calls) == 1 and out["x"].shape == (50, 7)


@pytest.mark.slow
def test_mnist1d_is_cached_bit_identical_and_faster(own_cache):
    from valleys.zoo import data

    t0 = time.perf_counter()
    cold = data._mnist1d()
    t1 = time.perf_counter()
    warm = data._mnist1d()
    t2 = time.perf_counter()
    assert all(
        a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(cold, warm, strict=True)
    )
    assert t2 - t1 < (t1 - t0) / 3, (t1 - t0, t2 - t1)
    assert [tuple(t.shape) for t in warm] == [(4000, 40), (4000,), (1000, 40), (1000,)]
    mnist1d_data = pytest.importorskip("mnist1d.data")
    defaults = mnist1d_data.get_dataset_args(as_dict=True)
    assert {k: defaults[k] for k in data.MNIST1D_ARGS} == data.MNIST1D_ARGS  # the pinned args are the defaults
