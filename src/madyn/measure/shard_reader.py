"""Reading a checkpoint's safetensors shards one tensor at a time, for the layer-by-layer
measurement (:mod:`madyn.measure.layerwise`). :class:`ShardReader` checks every header first
(:func:`madyn.measure.safetensors_files.safetensors_header`), then reads a tensor's bytes
with ``pread`` (no memory map: the address space grows by the tensor read, not by the
shard), with ``O_DIRECT`` where the file system allows it, into fresh memory or into a
:class:`Slab` reused from layer to layer. Direct reads start, end and land on multiples of
:data:`DIRECT_ALIGN` (4096 bytes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.safetensors_files import safetensors_header

_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                 "U8": "uint8", "BOOL": "bool"}


DIRECT_ALIGN = 4096  # bytes: O_DIRECT reads start, end and land on multiples of this


def _aligned_empty(nbytes: int):
    """Fresh uint8 CPU memory of ``nbytes`` starting at a multiple of DIRECT_ALIGN."""
    import torch

    buf = torch.empty(nbytes + DIRECT_ALIGN, dtype=torch.uint8)
    off = (-buf.data_ptr()) % DIRECT_ALIGN
    return buf[off:off + nbytes]


class Slab:
    """Memory for one decoder layer's tensors, reused by every layer read into it (the
    layers take turns over two slabs: one runs while the next is read)."""

    def __init__(self) -> None:
        self.buf = None
        self.at = 0

    def reset(self, nbytes: int) -> None:
        """Make room for ``nbytes`` (grown when too small) and start from the top."""
        if self.buf is None or self.buf.numel() < nbytes:
            self.buf = _aligned_empty(nbytes)
        self.at = 0

    def take(self, nbytes: int):
        """The next ``nbytes`` of the slab (aligned), as a uint8 tensor."""
        if self.buf is None or self.at + nbytes > self.buf.numel():
            raise MemoryError("slab too small for the layer's tensors")
        view = self.buf[self.at:self.at + nbytes]
        self.at += -(-nbytes // DIRECT_ALIGN) * DIRECT_ALIGN
        return view


class ShardReader:
    """The tensors of a checkpoint's safetensors files, read one at a time with ``pread``
    (no memory map: the address space grows by the tensor read, not by the shard). The
    headers are checked first (:func:`madyn.measure.safetensors_files.safetensors_header`).
    ``direct``: read with ``O_DIRECT`` where the file system allows it (the disk writes
    into the tensor's memory; no copy through the page cache, which costs CPU that the
    forward pass running beside the reads wants), else buffered. ``bytes_read`` and
    ``seconds`` count what was read and how long it took."""

    def __init__(self, files: list[Path], direct: bool = True) -> None:
        self.tensors: dict[str, dict] = {}
        self._files: dict[str, Path] = {}
        for f in files:
            for name, t in safetensors_header(Path(f)).items():
                self.tensors[name] = t
                self._files[name] = Path(f)
        self._fds: dict[Path, tuple[int, int | None]] = {}  # buffered fd, O_DIRECT fd
        self.direct = direct and hasattr(os, "O_DIRECT")
        self.bytes_read = 0
        self.seconds = 0.0

    def _open(self, path: Path) -> tuple[int, int | None]:
        if path not in self._fds:
            from madyn.io import open_regular

            with open_regular(path) as f:  # refuses a FIFO or a device, naming it
                fd = os.dup(f.fileno())
            dfd = None
            if self.direct:
                try:
                    dfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                    if not os.path.samestat(os.fstat(fd), os.fstat(dfd)):
                        os.close(dfd)  # replaced between the two opens: do not trust it
                        dfd = None
                except OSError:
                    dfd = None
            self._fds[path] = (fd, dfd)
        return self._fds[path]

    def read(self, name: str, slab: Slab | None = None):
        """Tensor ``name`` as a CPU tensor of its stored dtype and shape: in fresh memory,
        or in ``slab`` (memory reused from layer to layer: the first touch of fresh
        memory, a page fault per 4 KB, costs more than the disk read itself)."""
        import torch

        t = self.tensors[name]
        dtype = _TORCH_DTYPES.get(t["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self._files[name]}: tensor {name!r} has dtype "
                                  f"{t['dtype']}, which madyn does not read layer by layer")
        t0 = time.monotonic()
        path = self._files[name]
        fd, dfd = self._open(path)
        n, begin = t["offsets"][1] - t["offsets"][0], t["begin"]
        alloc = slab.take if slab is not None else _aligned_empty
        raw = None
        if dfd is not None and n >= DIRECT_ALIGN:
            a0 = begin // DIRECT_ALIGN * DIRECT_ALIGN
            a1 = -(-(begin + n) // DIRECT_ALIGN) * DIRECT_ALIGN
            region = alloc(a1 - a0)
            try:
                got = self._pread(dfd, memoryview(region.numpy()), a0, a1 - a0)
            except OSError:  # a file system that takes O_DIRECT opens but not reads
                self._fds[path] = (fd, None)
                os.close(dfd)
            else:
                if got < begin + n - a0:
                    raise CheckpointError(f"{path}: truncated while reading tensor {name!r}")
                raw = region[begin - a0:begin - a0 + n]
        if raw is None:
            raw = alloc(n)
            if self._pread(fd, memoryview(raw.numpy()), begin, n) < n:
                raise CheckpointError(f"{path}: truncated while reading tensor {name!r}")
        self.bytes_read += n
        self.seconds += time.monotonic() - t0
        try:
            return raw.view(getattr(torch, dtype)).reshape(t["shape"])
        except RuntimeError:  # an offset the dtype cannot view at: copy
            return raw.clone().view(getattr(torch, dtype)).reshape(t["shape"])

    def span(self, name: str) -> int:
        """The most bytes :meth:`read` takes from a :class:`Slab` for tensor ``name``."""
        t = self.tensors[name]
        return t["offsets"][1] - t["offsets"][0] + 3 * DIRECT_ALIGN

    @staticmethod
    def _pread(fd: int, view: memoryview, at: int, n: int) -> int:
        """Read ``n`` bytes at ``at`` into ``view`` (fewer only at the end of the file)."""
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:n]], at + got)
            if k <= 0:
                break
            got += k
        return got

    def close(self) -> None:
        for fd, dfd in self._fds.values():
            os.close(fd)
            if dfd is not None:
                os.close(dfd)
        self._fds.clear()
