"""Weights in and out one tensor at a time, so a 1.5 B export never holds the model in memory.

CheckpointReader reads one named tensor of a Hugging Face folder as fp32: safetensors files
(single or sharded) are parsed here and read with plain positioned reads, not mapped, so the
pages read do not stay in the process's resident set; a `pytorch_model.bin` falls back to
torch's memory-mapped load. ExternalData appends each ONNX initializer to one data file beside
the graph (ONNX external data), aligned so onnxruntime can map it, and hands back the
TensorProto that points at it: the graph in memory holds names and offsets, not weights.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
ALIGN = 65536  # onnxruntime maps external data whose offset is a multiple of the allocation granularity


def weight_files(hf_dir: Path) -> list[Path]:
    """The safetensors files that hold the model, as transformers picks them: the shards the
    index names, else model.safetensors, else every *.safetensors. Other files beside them are
    not the model: a training checkpoint keeps its pre-decay weights in stable.safetensors, and
    reading those too (over the real ones, same names) exported the wrong weights."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [hf_dir / s for s in shards]
    if (hf_dir / "model.safetensors").is_file():
        return [hf_dir / "model.safetensors"]
    return sorted(hf_dir.glob("*.safetensors"))


class CheckpointReader:
    """Tensors of a HF folder by name, as fp32 numpy arrays (bf16/fp16 widened), read on demand."""

    def __init__(self, hf_dir: str | Path):
        self.hf_dir = Path(hf_dir)
        self._index: dict[str, tuple[Path, str, list[int], int, int]] = {}
        self._torch: dict | None = None
        for path in weight_files(self.hf_dir):
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                start, end = meta["data_offsets"]
                self._index[name] = (path, meta["dtype"], meta["shape"], 8 + n + start, end - start)
        if not self._index:
            bins = sorted(self.hf_dir.glob("pytorch_model*.bin"))
            if not bins:
                raise FileNotFoundError(f"{self.hf_dir}: no *.safetensors or pytorch_model*.bin weights")
            import torch

            self._torch = {}
            for path in bins:  # memory-mapped: a tensor's pages are read when it is converted
                self._torch.update(torch.load(path, map_location="cpu", mmap=True, weights_only=True))

    def names(self) -> list[str]:
        return list(self._torch) if self._torch is not None else list(self._index)

    def __contains__(self, name: str) -> bool:
        return name in (self._torch if self._torch is not None else self._index)

    def get(self, name: str) -> np.ndarray:
        if self._torch is not None:
            return self._torch[name].float().numpy()
        path, dtype, shape, offset, length = self._index[name]
        if dtype not in _DTYPES:
            raise ValueError(f"{path.name}: tensor {name} has dtype {dtype}, not a float")
        buf = np.empty(length // np.dtype(_DTYPES[dtype]).itemsize, dtype=_DTYPES[dtype])
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            f.readinto(memoryview(buf).cast("B"))
        if dtype == "BF16":  # the upper half of an fp32
            buf = (buf.astype(np.uint32) << 16).view(np.float32)
        return buf.astype(np.float32, copy=False).reshape(shape)

    def nbytes_fp32(self) -> int:
        """Bytes of every tensor at fp32 (what the fp32 graph's data file will hold)."""
        if self._torch is not None:
            return sum(t.numel() * 4 for t in self._torch.values())
        return sum(int(np.prod(s, dtype=np.int64)) * 4 for _, _, s, _, _ in self._index.values())


class ExternalData:
    """One ONNX external data file, written as tensors come; `tensor()` returns the proto to use."""

    def __init__(self, graph_path: str | Path, inline: bool = False):
        self.path = Path(str(graph_path) + ".data")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.inline = inline  # small models: weights in the graph file, one file as before
        self._f = None if inline else open(self.path, "wb")
        self.bytes = 0

    def tensor(self, arr: np.ndarray, name: str, data_type: int | None = None, dims=None):
        """arr's bytes appended to the file; data_type/dims for packed types (int4) whose
        numpy array is the raw uint8 buffer."""
        from onnx import TensorProto, helper

        t = TensorProto()
        t.name = name
        if data_type is None:
            data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.data_type = data_type
        t.dims.extend(arr.shape if dims is None else dims)
        arr = np.ascontiguousarray(arr).reshape(-1)
        self.bytes += arr.nbytes
        if self.inline or arr.nbytes < 1024:  # shape inference reads small constants (axes) inline
            t.raw_data = arr.tobytes()
            return t
        pad = -self._f.tell() % ALIGN
        self._f.write(b"\0" * pad)
        offset = self._f.tell()
        self._f.write(memoryview(arr).cast("B"))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(arr.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return t

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (ru_maxrss: kilobytes on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if os.uname().sysname == "Darwin" else 1024)
