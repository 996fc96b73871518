"""Read and write safetensors checkpoints without holding a model in memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import torch
from mergehub import MergehubError, TensorHeader, dtypes
from safetensors import SafetensorError, safe_open

from mergehub_io_safetensors.damage import header_problem

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class SafetensorsBackend:
    """Claims directories holding safetensors weights."""

    def detect(self, directory: Path) -> int | None:
        if (directory / INDEX).is_file() or (directory / SINGLE).is_file():
            return 100
        return 10 if any(directory.glob("*.safetensors")) else None

    def open(self, directory: Path) -> SafetensorsReader:
        return SafetensorsReader(directory)

    def writer(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str],
               done: int = 0) -> StreamingWriter:
        return StreamingWriter(path, entries, metadata, done)


class SafetensorsReader:
    """Maps tensor names to files, memory-mapped.

    Every file is opened (which reads and checks its header, not its data) when the reader is
    made, so a damaged or cut-short download, or an index placing tensors in a shard that lacks
    them, is reported while planning, before anything is written.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.files: dict[str, Any] = {}
        index = directory / INDEX
        if index.is_file():
            self.where = read_index(index)
            self._check_shards(index)
        else:
            files = [directory / SINGLE] if (directory / SINGLE).is_file() else sorted(
                path for path in directory.glob("*.safetensors") if path.is_file())
            self.where = {name: f.name for f in files for name in self._handle(f.name).keys()}

    def _check_shards(self, index: Path) -> None:
        """Open every shard the index names; each must hold the tensors the index places in it."""
        listed: dict[str, list[str]] = {}
        for name, file in self.where.items():
            listed.setdefault(file, []).append(name)
        for file, names in listed.items():
            present = set(self._handle(file, index).keys())
            lost = [name for name in names if name not in present]
            if lost:
                shown = ", ".join(lost[:3]) + (" …" if len(lost) > 3 else "")
                raise MergehubError(f"{self.directory / file} lacks {len(lost)} tensor(s) that {index.name} places in it: "
                                    f"{shown}", hint="the index and the shards come from different versions of the model; "
                                                     "re-download it")

    def _handle(self, file: str, index: Path | None = None) -> Any:
        if file not in self.files:
            self.files[file] = open_file(self.directory / file, index)
        return self.files[file]

    def tensor_names(self) -> list[str]:
        return list(self.where)

    def header(self, name: str) -> TensorHeader:
        sliced = self._handle(self.where[name]).get_slice(name)
        code = sliced.get_dtype()
        if code not in dtypes.SAFETENSORS_CODES:
            raise MergehubError(f"tensor {name} in {self.directory / self.where[name]} has dtype {code}, which mergehub "
                                "cannot read", hint="convert the model to one of: " + ", ".join(dtypes.SAFETENSORS_CODES))
        return TensorHeader(dtypes.SAFETENSORS_CODES[code], tuple(sliced.get_shape()))

    def read(self, name: str) -> torch.Tensor:
        return self._handle(self.where[name]).get_tensor(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (along dim 0) only, copied out of the memory map."""
        return self._handle(self.where[name]).get_slice(name)[start:stop]

    def close(self) -> None:
        self.files.clear()


def read_index(index: Path) -> dict[str, str]:
    """The index's tensor -> shard map; a shard must be a plain file name beside the index."""
    hint = "the index file is damaged; re-download the model"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MergehubError(f"cannot read {index}: {exc}", hint=hint) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise MergehubError(f"{index} has no weight_map mapping tensor names to shard files", hint=hint)
    for file in sorted(set(weight_map.values())):
        if Path(file).name != file or file in ("", ".", ".."):
            raise MergehubError(f"{index} places tensors in {file!r}, which is not a file beside the index",
                                hint="shards must sit in the model directory itself; " + hint)
    return dict(weight_map)


def open_file(path: Path, index: Path | None = None) -> Any:
    """``safe_open`` with errors that name the file and, for a damaged header, the tensor and the numbers."""
    try:
        return safe_open(str(path), framework="pt")
    except FileNotFoundError:
        listed = f", which {index.name} lists," if index is not None else ""
        raise MergehubError(f"{path}{listed} is missing",
                            hint="the download is incomplete; download the model again") from None
    except SafetensorError as exc:
        try:
            reason = header_problem(path) or str(exc)
        except OSError:
            reason = str(exc)
        raise MergehubError(f"{path} is not a readable safetensors file: {reason}",
                            hint="the file is damaged or was cut short; re-download it "
                                 "(compare its size with the source's)") from exc
    except OSError as exc:
        raise MergehubError(f"cannot open {path}: {exc.strerror or exc}",
                            hint="check that the file exists and that you may read it") from exc


class StreamingWriter:
    """Writes one shard: header first (offsets known from the plan), then each tensor in order.

    Safetensors' own ``save_file`` needs every tensor in memory at once; this writer
    needs only the tensor being written.
    """

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str],
                 done: int = 0):
        """``done``: the first ``done`` tensors are already in the file (a resumed run); keep them."""
        self.path = path
        self.order = [name for name, _, _ in entries]
        self.sizes: dict[str, int] = {}
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for name, dtype, shape in entries:
            size = dtypes.nbytes(dtype, shape)
            header[name] = {"dtype": dtypes.CODES_BY_NAME[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.sizes[name] = size
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data must start 8-byte aligned
        prefix = struct.pack("<Q", len(raw)) + raw
        self.file = _reopen(path, prefix, done_bytes=sum(self.sizes[n] for n in self.order[:done])) if done else open(path, "wb")
        if not done:
            self.file.write(prefix)
        self.flusher = Writeback(self.file.fileno(), self.file.tell())
        self.next = done  # index of the tensor being written
        self.done = 0  # its bytes written so far
        self._skip_empty()

    def flush(self) -> None:
        """Hand everything written so far to the kernel (it then survives the process being killed)."""
        self.file.flush()

    def _skip_empty(self) -> None:
        while self.next < len(self.order) and self.sizes[self.order[self.next]] == 0:
            self.next += 1  # empty tensors have no bytes to wait for

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor``'s bytes: the whole tensor, or its next block of rows (blocks in order)."""
        if self.sizes.get(name) == 0:
            return
        if self.next >= len(self.order):
            raise RuntimeError(f"tensor {name} written after the last planned tensor")
        expected = self.order[self.next]
        if name != expected:
            raise RuntimeError(f"tensor {name} written out of order (expected {expected})")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self.done += data.nbytes
        if self.done > self.sizes[name]:
            raise RuntimeError(f"tensor {name} has more bytes than the {self.sizes[name]} planned")
        self.file.write(memoryview(data))
        self.flusher.wrote(data.nbytes)
        if self.done == self.sizes[name]:
            self.next += 1
            self.done = 0
            self._skip_empty()

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None and (self.next != len(self.order) or self.done):
                raise RuntimeError(f"{self.path}: {len(self.order) - self.next} tensors were never written")
            if kind is None:
                self.file.flush()
                os.fsync(self.file.fileno())
        finally:
            self.file.close()


def _reopen(path: Path, prefix: bytes, done_bytes: int) -> BinaryIO:
    """An interrupted shard, cut after its last complete tensor and positioned to go on from there.

    The header must be the one this run would write (same tensors, same offsets); anything else
    means the partial file is not this run's.
    """
    try:
        file = open(path, "r+b")
    except OSError as exc:
        raise MergehubError(f"cannot resume {path}: {exc}", hint="start over: run again with --force instead of --resume") from exc
    keep = len(prefix) + done_bytes
    if file.read(len(prefix)) != prefix or os.fstat(file.fileno()).st_size < keep:
        file.close()
        raise MergehubError(f"cannot resume {path}: the interrupted shard does not match this run's layout",
                            hint="start over: run again with --force instead of --resume")
    file.truncate(keep)
    file.seek(keep)
    return file


class Writeback:
    """Starts the disk write of each finished stretch of a shard while the merge goes on.

    Without it the kernel holds the whole shard as dirty pages until the final fsync, which
    then waits for all of it; asking for write-out every ``step`` bytes (Linux
    ``sync_file_range``, which does not wait) overlaps the disk with the maths and keeps dirty
    memory small. Where the call is not available this does nothing and fsync does it all.
    """

    STEP = 64 * 1024**2
    _call: Any = None

    def __init__(self, fd: int, start: int):
        self.fd = fd
        self.start = start  # first byte not yet handed to the kernel for writing
        self.written = start

    def wrote(self, nbytes: int) -> None:
        self.written += nbytes
        if self.written - self.start >= self.STEP:
            _sync_file_range(self.fd, self.start, self.written - self.start)
            self.start = self.written


SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range(fd: int, offset: int, nbytes: int) -> None:
    if Writeback._call is None:
        Writeback._call = _load_sync_file_range()
    if Writeback._call:
        Writeback._call(fd, ctypes.c_int64(offset), ctypes.c_int64(nbytes), SYNC_FILE_RANGE_WRITE)


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.sync_file_range
    except (OSError, AttributeError):
        return False
