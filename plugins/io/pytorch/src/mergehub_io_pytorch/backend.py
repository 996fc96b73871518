"""Read PyTorch ``.bin`` checkpoints (pickled state dicts) safely, lazily and memory-mapped.

A ``.bin`` file is a Python pickle, and unpickling can run whatever code the file's author
chose. Every file is therefore opened with ``torch.load(weights_only=True)``, whose
unpickler rebuilds only tensors and plain containers; a file that needs anything else is
refused with an error, and never retried with ``weights_only=False``.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import torch
from mergehub import MergehubError, TensorHeader, dtypes

INDEX = "pytorch_model.bin.index.json"
SINGLE = "pytorch_model.bin"
#: ``.bin`` files found beside weights that are not weights (training state, PEFT adapters).
NOT_WEIGHTS = {"training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin"}
NOT_WEIGHTS_PREFIXES = ("adapter_", "rng_state")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since torch 1.6
REDOWNLOAD = "re-download the model (compare the file sizes with the source)"


def weight_files(directory: Path) -> list[Path]:
    """Loose ``*.bin`` weight files: what a directory without pytorch_model.bin or an index offers."""
    return sorted(path for path in directory.glob("*.bin")
                  if path.is_file() and path.name not in NOT_WEIGHTS and not path.name.startswith(NOT_WEIGHTS_PREFIXES))


class PytorchBackend:
    """Claims directories holding ``.bin`` weights, below safetensors (100/10) when both are present."""

    def detect(self, directory: Path) -> int | None:
        if (directory / INDEX).is_file() or (directory / SINGLE).is_file():
            return 50
        return 5 if weight_files(directory) else None

    def open(self, directory: Path) -> PytorchReader:
        return PytorchReader(directory)


class PytorchReader:
    """Maps tensor names to files; loads a file only when one of its tensors is first needed.

    With an index, nothing is loaded until a header or tensor is asked for. Without one, the
    file list has to be loaded to learn the names, which for zip checkpoints still reads
    only the pickled structure (the tensor data stays memory-mapped, untouched).
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.loaded: dict[str, dict[str, torch.Tensor]] = {}
        self._where: dict[str, str] | None = None
        index = directory / INDEX
        if index.is_file():
            self._where = read_index(index)
            self.files = sorted(set(self._where.values()))
        else:
            self.files = [SINGLE] if (directory / SINGLE).is_file() else [p.name for p in weight_files(directory)]

    @property
    def where(self) -> dict[str, str]:
        """Tensor name -> file holding it."""
        if self._where is None:
            self._where = self._scan()
        return self._where

    def _scan(self) -> dict[str, str]:
        where: dict[str, str] = {}
        for file in self.files:
            for name in self._file(file):
                if name in where:
                    raise MergehubError(f"tensor {name} is in both {where[name]} and {file} in {self.directory}",
                                        hint=f"keep only one checkpoint in the directory, or add a {INDEX}")
                where[name] = file
        return where

    def _file(self, file: str) -> dict[str, torch.Tensor]:
        if file not in self.loaded:
            self.loaded[file] = load_state_dict(self.directory / file)
        return self.loaded[file]

    def _tensor(self, name: str) -> torch.Tensor:
        file = self.where[name]
        tensors = self._file(file)
        if name not in tensors:
            raise MergehubError(f"{self.directory / INDEX} places {name} in {file}, but that file has no such tensor",
                                hint=f"the index does not match the shards; {REDOWNLOAD}")
        return tensors[name]

    def tensor_names(self) -> list[str]:
        return list(self.where)

    def header(self, name: str) -> TensorHeader:
        """dtype and shape from the (mapped) tensor's metadata; its data is not read."""
        tensor = self._tensor(name)
        dtype = dtypes.name_of(tensor.dtype)
        if dtype not in dtypes.ITEMSIZE or tensor.layout is not torch.strided:
            raise MergehubError(f"tensor {name} in {self.directory / self.where[name]} is a {tensor.layout} {dtype} "
                                "tensor, which mergehub cannot merge",
                                hint="only dense tensors of these dtypes are supported: " + ", ".join(dtypes.ITEMSIZE))
        return TensorHeader(dtype, tuple(tensor.shape))

    def read(self, name: str) -> torch.Tensor:
        """A contiguous copy: the caller never holds (or writes through) the file's mapping."""
        return self._tensor(name).clone(memory_format=torch.contiguous_format)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (along dim 0) only, copied out of the mapping: only their pages are read."""
        return self._tensor(name)[start:stop].clone(memory_format=torch.contiguous_format)

    def close(self) -> None:
        self.loaded.clear()


def read_index(index: Path) -> dict[str, str]:
    """The index's weight map, after checking that every shard it names exists."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MergehubError(f"cannot read {index}: {exc}", hint=f"the index file is damaged; {REDOWNLOAD}") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise MergehubError(f"{index}: weight_map must map tensor names to file names", hint=REDOWNLOAD)
    for file in sorted(set(weight_map.values())):
        if not (index.parent / file).is_file():
            raise MergehubError(f"shard {file} named by {index} is missing",
                                hint=f"download the missing shard into {index.parent}, or {REDOWNLOAD}")
    return dict(weight_map)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one ``.bin`` file, loaded weights-only.

    Zip checkpoints (torch.save's format since torch 1.6) are memory-mapped (``mmap=True``):
    loading unpickles only the small structure, and no tensor data is read until used.
    Legacy (non-zip) pickles cannot be mapped, so they are loaded whole with ``mmap=False``
    (still ``weights_only=True``) and cost their full size in memory while the reader is open.
    """
    try:
        with open(path, "rb") as file:
            zipped = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except OSError as exc:
        raise MergehubError(f"cannot open {path}: {exc.strerror or exc}",
                            hint="check that the file exists and is readable") from exc
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's to act on
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:  # raised only by the weights-only unpickler
        raise refusal(path, exc) from exc
    except Exception as exc:  # torch's parsers raise many kinds of exceptions on damaged files
        raise MergehubError(f"cannot read {path}: the file is truncated, damaged or not a PyTorch checkpoint "
                            f"({reason(exc)})", hint=REDOWNLOAD) from exc
    return tensors_of(path, state)


def refusal(path: Path, exc: pickle.UnpicklingError) -> MergehubError:
    """The error for a pickle that needs more than tensors and containers to unpickle."""
    detail = str(exc.__context__ or exc)  # torch re-raises with advice to drop weights_only; keep its cause
    needed = re.search(r"GLOBAL (\S+)", detail)
    why = f"it needs {needed.group(1)}" if needed else reason(exc.__context__ or exc)
    return MergehubError(
        f"refusing to load {path}: it is not a weights-only pickle ({why}), and unpickling it could run arbitrary code",
        hint="mergehub only loads weights-only pickles and never runs code from a checkpoint. If you trust the "
             "file's source, convert it to safetensors with a trusted tool (e.g. transformers' save_pretrained in an "
             "environment you control) and merge the converted directory; otherwise do not use the file",
    )


def reason(exc: BaseException) -> str:
    """The first sentence of an exception's message, or what kind it is."""
    if isinstance(exc, EOFError):
        return "the file ends too early"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". ")[0].removesuffix(".")
    return text[:200] if text else type(exc).__name__


def tensors_of(path: Path, state: object) -> dict[str, torch.Tensor]:
    """The tensors at the top level of a loaded state dict (other entries, e.g. metadata, are skipped)."""
    if not isinstance(state, dict):
        raise MergehubError(f"{path} holds a {type(state).__name__}, not a state dict of tensors",
                            hint="save model.state_dict() (or use save_pretrained) rather than a whole object")
    tensors = {k: v.detach() for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise MergehubError(f"{path} holds no tensors at its top level",
                            hint="a training checkpoint nests the weights (e.g. under 'state_dict'); save those alone")
    return tensors
