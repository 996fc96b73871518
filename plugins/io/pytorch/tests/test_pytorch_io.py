"""The PyTorch ``.bin`` reader: lazy, memory-mapped, weights-only; merges of ``.bin`` inputs through the real CLI.

transformers 5 always saves safetensors (``safe_serialization=False`` is ignored), so the ``.bin`` checkpoints
here are written as older transformers wrote them: ``torch.save`` of the state dict that ``save_pretrained``
produced (tied models therefore have no ``lm_head.weight``), sharded with a ``pytorch_model.bin.index.json``.
"""

from __future__ import annotations

import fractions
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from mergehub import MergehubError
from mergehub.testing import (
    CliResult,
    forward_pass,
    load_state,
    merge_ok,
    open_reader,
    run_cli,
)
from mergehub_io_pytorch.backend import INDEX, PytorchBackend, PytorchReader


def to_bin(src: Path, dst: Path, shards: int = 1, legacy: bool = False) -> Path:
    """A copy of the model directory ``src`` with its weights as ``.bin`` file(s) instead of safetensors."""
    dst.mkdir(parents=True)
    for name in ("config.json", "generation_config.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    state = load_state(src)
    if shards == 1:
        torch.save(state, dst / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
        return dst
    names = list(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        group = names[i::shards]
        torch.save({n: state[n] for n in group}, dst / file)
        weight_map |= {n: file for n in group}
    total = sum(t.nbytes for t in state.values())
    (dst / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return dst


def write_recipe(path: Path, *models: tuple[Path, float]) -> Path:
    lines = ["merge_method: linear", "models:"]
    lines += [f"  - model: {m}\n    parameters: {{weight: {w}}}" for m, w in models]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_clean_failure(result: CliResult, *needles: str) -> str:
    text = result.flat
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{result.output}"
    return text


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


# -- the reader --------------------------------------------------------------------------------------------------
def test_detect_priorities_and_safetensors_wins(tmp_path, tiny_models, fresh_registry):
    src = tiny_models("a", layers=1, seed=1)
    single, sharded = to_bin(src, tmp_path / "single"), to_bin(src, tmp_path / "sharded", shards=2)
    loose = tmp_path / "loose"
    loose.mkdir()
    torch.save({"w": torch.zeros(2)}, loose / "weights.bin")
    backend = PytorchBackend()
    assert backend.detect(single) == 50 and backend.detect(sharded) == 50 and backend.detect(loose) == 5
    not_weights = tmp_path / "not-weights"
    not_weights.mkdir()
    for name in ("training_args.bin", "adapter_model.bin", "optimizer.bin"):
        (not_weights / name).write_bytes(b"x")
    assert backend.detect(not_weights) is None and backend.detect(tmp_path) is None
    both = tmp_path / "both"
    shutil.copytree(src, both)
    shutil.copyfile(single / "pytorch_model.bin", both / "pytorch_model.bin")
    assert type(open_reader(both, fresh_registry)).__name__ == "SafetensorsReader"
    assert type(open_reader(single, fresh_registry)) is PytorchReader


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to see memory maps")
def test_shards_are_loaded_lazily_and_memory_mapped(tmp_path, tiny_models):
    src = tiny_models("a", layers=1, seed=1)
    model = to_bin(src, tmp_path / "m", shards=2)
    weight_map = json.loads((model / INDEX).read_text())["weight_map"]
    first, second = (str(model / f"pytorch_model-0000{i}-of-00002.bin") for i in (1, 2))
    reader = PytorchReader(model)
    assert sorted(reader.tensor_names()) == sorted(weight_map) and reader.loaded == {}
    name = next(n for n, f in weight_map.items() if f.startswith("pytorch_model-00001"))
    header = reader.header(name)
    assert list(reader.loaded) == ["pytorch_model-00001-of-00002.bin"]
    assert first in mapped_files() and second not in mapped_files()
    expected = load_state(src)[name]
    assert header.dtype == "float32" and header.shape == tuple(expected.shape)
    assert torch.equal(reader.read(name), expected)
    reader.close()


def test_read_rows_is_a_contiguous_copy_of_just_those_rows(tmp_path):
    wide = torch.randn(6, 5)
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"t": wide.t(), "v": torch.arange(10.0)}, model / "pytorch_model.bin")  # "t" is stored transposed
    reader = PytorchBackend().open(model)
    assert reader.header("t").shape == (5, 6)
    rows = reader.read_rows("t", 1, 3)
    assert rows.is_contiguous() and torch.equal(rows, wide.t()[1:3])
    rows.fill_(0)  # a copy: the next read is unchanged
    assert torch.equal(reader.read_rows("t", 1, 3), wide.t()[1:3]) and reader.read("t").is_contiguous()
    assert torch.equal(reader.read_rows("v", 4, 7), torch.tensor([4.0, 5.0, 6.0]))


def test_legacy_pickle_is_read_without_mmap(tmp_path, tiny_models):
    src = tiny_models("a", layers=1, seed=1)
    model = to_bin(src, tmp_path / "legacy", legacy=True)
    assert not (model / "pytorch_model.bin").read_bytes().startswith(b"PK")  # really the old format
    reader = PytorchBackend().open(model)
    state = load_state(src)
    assert sorted(reader.tensor_names()) == sorted(state)
    assert all(torch.equal(reader.read(n), t) for n, t in state.items())


def test_loose_bin_files_skip_training_state(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"a": torch.ones(2)}, model / "part-1.bin")
    torch.save({"b": torch.zeros(3)}, model / "part-2.bin")
    (model / "training_args.bin").write_bytes(b"not a weights file")
    reader = PytorchBackend().open(model)
    assert sorted(reader.tensor_names()) == ["a", "b"] and reader.header("b").shape == (3,)
    torch.save({"b": torch.zeros(1)}, model / "part-3.bin")
    with pytest.raises(MergehubError, match="tensor b is in both part-2.bin and part-3.bin"):
        PytorchBackend().open(model).tensor_names()


def test_global_outside_the_allow_list_is_refused(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"w": torch.zeros(2), "ratio": fractions.Fraction(1, 3)}, model / "pytorch_model.bin")
    with pytest.raises(MergehubError, match=r"refusing to load .*pytorch_model\.bin.*fractions\.Fraction") as caught:
        PytorchBackend().open(model).tensor_names()
    assert "weights-only" in caught.value.hint and "safetensors" in caught.value.hint


# -- merges through the real CLI ----------------------------------------------------------------------------------
def test_bin_mixed_with_safetensors_is_the_mean(tmp_path, tiny_models):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    a_bin = to_bin(a, tmp_path / "a-bin")
    merge_ok(write_recipe(tmp_path / "r.yml", (a_bin, 1), (b, 1)), tmp_path / "out")
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert set(out) == set(sa)
    for name, tensor in out.items():
        torch.testing.assert_close(tensor.double(), (sa[name].double() + sb[name].double()) / 2, rtol=0, atol=1e-6)
    forward_pass(tmp_path / "out")


def test_sharded_bin_merge_and_row_blocks_give_the_same_bytes(tmp_path, tiny_models):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    a_bin, b_bin = to_bin(a, tmp_path / "a", shards=3), to_bin(b, tmp_path / "b", shards=2)
    cfg = write_recipe(tmp_path / "r.yml", (a_bin, 1), (b_bin, 3))
    merge_ok(cfg, tmp_path / "whole")
    merge_ok(cfg, tmp_path / "blocks", "--max-memory", "2KiB")  # the 64x16 embeddings are merged in row blocks
    assert (tmp_path / "whole/model.safetensors").read_bytes() == (tmp_path / "blocks/model.safetensors").read_bytes()
    out, sa, sb = load_state(tmp_path / "whole"), load_state(a), load_state(b)
    assert set(out) == set(sa)
    for name, tensor in out.items():
        expected = (sa[name].double() + 3 * sb[name].double()) / 4
        torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6)
    forward_pass(tmp_path / "whole")


def test_tied_llama_from_bin_stays_tied(tmp_path, tiny_models):
    a, b = tiny_models("ta", layers=2, seed=3, tied=True), tiny_models("tb", layers=2, seed=4, tied=True)
    a_bin, b_bin = to_bin(a, tmp_path / "a"), to_bin(b, tmp_path / "b", shards=2)
    assert "lm_head.weight" not in PytorchBackend().open(a_bin).tensor_names()
    merge_ok(write_recipe(tmp_path / "r.yml", (a_bin, 1), (b_bin, 1)), tmp_path / "out")
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert "lm_head.weight" not in out and set(out) == set(sa)
    for name, tensor in out.items():
        torch.testing.assert_close(tensor.double(), (sa[name].double() + sb[name].double()) / 2, rtol=0, atol=1e-6)
    forward_pass(tmp_path / "out")


class Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused(tmp_path, tiny_models, legacy):
    good = to_bin(tiny_models("a", layers=1, seed=1), tmp_path / "good")
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copyfile(good / "config.json", evil / "config.json")
    marker = tmp_path / "PWNED"
    state = {**torch.load(good / "pytorch_model.bin", weights_only=True), "payload": Payload(marker)}
    torch.save(state, evil / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    result = run_cli("merge", write_recipe(tmp_path / "r.yml", (good, 1), (evil, 1)), "--out", tmp_path / "out")
    assert_clean_failure(result, f"refusing to load {evil / 'pytorch_model.bin'}", "posix.system",
                         "only loads weights-only pickles", "convert it to safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_truncated_bin_is_a_clear_error(tmp_path, tiny_models):
    good = to_bin(tiny_models("a", layers=1, seed=1), tmp_path / "good")
    broken = to_bin(tiny_models("a", layers=1, seed=1), tmp_path / "broken", shards=2)
    shard = broken / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:-300])
    result = run_cli("merge", write_recipe(tmp_path / "r.yml", (good, 1), (broken, 1)), "--out", tmp_path / "out")
    assert_clean_failure(result, f"cannot read {shard}", "truncated, damaged or not a PyTorch checkpoint",
                         "re-download")


def test_missing_shard_named_by_the_index_is_a_clear_error(tmp_path, tiny_models):
    src = tiny_models("a", layers=1, seed=1)
    model = to_bin(src, tmp_path / "m", shards=2)
    (model / "pytorch_model-00001-of-00002.bin").unlink()
    result = run_cli("merge", write_recipe(tmp_path / "r.yml", (src, 1), (model, 1)), "--out", tmp_path / "out")
    assert_clean_failure(result, f"shard pytorch_model-00001-of-00002.bin named by {model / INDEX} is missing")


def test_plugins_lists_the_backend():
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["kind"] == "io"]
    assert {"kind": "io", "name": "pytorch", "distribution": "mergehub-io-pytorch", "version": "0.1.0",
            "status": "ok"} in rows
    assert {r["name"] for r in rows} >= {"pytorch", "safetensors"}
