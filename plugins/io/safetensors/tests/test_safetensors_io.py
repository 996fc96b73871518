"""The streaming writer produces files safetensors itself reads back exactly; the reader handles shards."""

from __future__ import annotations

import json

import pytest
import torch
from mergehub import dtypes
from mergehub_io_safetensors.backend import SafetensorsBackend
from safetensors import safe_open
from safetensors.torch import save_file

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]


def sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(0, 100, shape).to(dtype)


def test_streaming_writer_round_trips_every_dtype(tmp_path):
    tensors = {f"t{i}": sample(d, (3, i + 1)) for i, d in enumerate(DTYPES)}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    entries = [(n, dtypes.name_of(t.dtype), tuple(t.shape)) for n, t in tensors.items()]
    with SafetensorsBackend().writer(tmp_path / "x.safetensors", entries, {"format": "pt"}) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(tensors)
        for name, tensor in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), name


def test_writer_rejects_wrong_order_size_and_missing(tmp_path):
    entries = [("a", "float32", (2,)), ("b", "float32", (2,))]
    with pytest.raises(RuntimeError, match="out of order"):
        with SafetensorsBackend().writer(tmp_path / "o.safetensors", entries, {}) as w:
            w.write("b", torch.zeros(2))
    with pytest.raises(RuntimeError, match="planned"):
        with SafetensorsBackend().writer(tmp_path / "s.safetensors", entries, {}) as w:
            w.write("a", torch.zeros(3))
    with pytest.raises(RuntimeError, match="never written"):
        with SafetensorsBackend().writer(tmp_path / "m.safetensors", entries, {}) as w:
            w.write("a", torch.zeros(2))


def test_reader_single_and_sharded(tmp_path):
    a, b = torch.randn(4, 2), torch.arange(6, dtype=torch.int64)
    single = tmp_path / "single"
    single.mkdir()
    save_file({"a": a, "b": b}, str(single / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a": a}, str(sharded / "model-00001-of-00002.safetensors"))
    save_file({"b": b}, str(sharded / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    backend = SafetensorsBackend()
    for directory in (single, sharded):
        assert backend.detect(directory) == 100
        reader = backend.open(directory)
        assert sorted(reader.tensor_names()) == ["a", "b"]
        assert reader.header("a").dtype == "float32" and reader.header("a").shape == (4, 2)
        assert reader.header("b").dtype == "int64"
        assert torch.equal(reader.read("a"), a) and torch.equal(reader.read("b"), b)
        reader.close()
    assert backend.detect(tmp_path) is None


def test_corrupt_file_is_a_clear_error(tmp_path):
    from mergehub import MergehubError

    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(MergehubError, match="model.safetensors"):
        SafetensorsBackend().open(tmp_path)


def test_early_writeback_keeps_the_bytes(tmp_path, monkeypatch):
    """Write-out requested every 64 bytes (instead of 64 MiB) changes nothing in the file."""
    from mergehub_io_safetensors.backend import Writeback

    monkeypatch.setattr(Writeback, "STEP", 64)
    tensors = {f"w{i}": torch.randn(37, 5 + i) for i in range(4)}
    entries = [(n, "float32", tuple(t.shape)) for n, t in tensors.items()]
    with SafetensorsBackend().writer(tmp_path / "x.safetensors", entries, {"format": "pt"}) as writer:
        for name, tensor in tensors.items():
            for rows in tensor.split(4):  # row blocks, as the executor writes them
                writer.write(name, rows)
        assert writer.flusher.start > writer.flusher.STEP  # write-out was requested while writing
    save_file(tensors, str(tmp_path / "ref.safetensors"), {"format": "pt"})
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert all(torch.equal(f.get_tensor(n), t) for n, t in tensors.items())
