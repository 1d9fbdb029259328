"""A checkpoint's safetensors weight files, checked before anything reads them: the shard
file names a ``model.safetensors.index.json`` maps its tensors to, each weight file a
regular file (a FIFO or a device is refused), and each file's header parsed into its
tensor table (shape, dtype, byte offsets) and checked against the file as the safetensors
library checks it when loading; a header above :data:`SAFETENSORS_HEADER_LIMIT` (16 MiB)
is refused."""

from __future__ import annotations

from pathlib import Path

from madyn.measure.checkpoint_error import CheckpointError, is_whole

SAFETENSORS_HEADER_LIMIT = 16 * 2**20  # bytes (the library allows 100 MB: 1.4 M empty
# tensors there cost 1.45 GB to parse); a real header takes about 100 bytes per tensor
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
               "F8_E5M2": 1}


def shard_names(index: Path) -> list[str]:
    """The shard file names a ``model.safetensors.index.json`` maps its tensors to (each a
    plain name in the index's folder); CheckpointError naming the index otherwise."""
    from madyn.io import read_json

    data = read_json(index)
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(
            isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
            for v in wmap.values()):
        raise CheckpointError(f"{index}: no weight_map of tensor -> shard file names")
    return sorted(set(wmap.values()))


def check_weight_files(files: list[Path]) -> list[Path]:
    """The weight files, each refused (:class:`madyn.io.UnsafeFile`, naming it) unless a
    regular file (a symlink to one is followed): a FIFO or /dev/zero would block or read
    without end. Returns ``files``."""
    import os
    import stat

    from madyn.io import open_regular

    for f in files:
        if not stat.S_ISREG(os.stat(f).st_mode):
            open_regular(f)  # raises, naming what it is
    return files


def safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file (name -> shape, numel, dtype, data offsets and
    ``begin``: the tensor's first byte in the file), checked against the
    file before anything is built from it, as the safetensors library checks it when
    loading. CheckpointError naming the file when it is truncated, its header length field
    lies or points past the data, the header is larger than
    :data:`SAFETENSORS_HEADER_LIMIT` or not JSON, a tensor's dtype is not one of
    :data:`DTYPE_SIZES`, its bytes do not fit its shape or the file, or the tensors' bytes
    overlap or leave a gap (each must start where the one before ends, the last end the
    file)."""
    import json
    import struct

    from madyn.io import open_regular

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a valid safetensors file: {why}")

    with open_regular(path) as f:
        import os

        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise bad(f"truncated ({size} bytes; the header length alone takes 8)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise bad(f"its header length field says {n} bytes, but only {size - 8} "
                      "follow it (truncated, or not a safetensors file)")
        if n > SAFETENSORS_HEADER_LIMIT:
            raise bad(f"a header of {n} bytes (at most {SAFETENSORS_HEADER_LIMIT} allowed)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad(f"its {n}-byte header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_len, tensors = size - 8 - n, {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        shape, offsets = (t.get("shape"), t.get("data_offsets")) if isinstance(t, dict) \
            else (None, None)
        if not (isinstance(shape, list) and all(is_whole(d) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(is_whole(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has no valid shape and data offsets")
        if offsets[1] > data_len:
            raise bad(f"tensor {name!r} ends at byte {offsets[1]} of the data, but the file "
                      f"holds {data_len} (truncated)")
        item = DTYPE_SIZES.get(t.get("dtype"))
        if item is None:
            raise bad(f"tensor {name!r} has dtype {t.get('dtype')!r}, not one madyn loads "
                      f"({', '.join(DTYPE_SIZES)})")
        numel = 1
        for d in shape:
            numel *= d
        if numel * item != offsets[1] - offsets[0]:
            raise bad(f"tensor {name!r}: {t['dtype']} {shape} takes {numel * item} bytes, "
                      f"its data offsets span {offsets[1] - offsets[0]}")
        tensors[name] = {"shape": shape, "numel": numel, "offsets": offsets,
                         "dtype": t["dtype"], "begin": 8 + n + offsets[0]}
    spans = sorted((t["offsets"], name) for name, t in tensors.items())
    for ((_, end), before), ((start, _), name) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise bad(f"tensor {name!r}'s bytes overlap tensor {before!r}'s (data_offsets)")
    end = 0
    for (start, stop), name in spans:
        if start > end:
            raise bad(f"the {start - end} bytes before tensor {name!r} belong to no tensor "
                      "(data_offsets)")
        end = stop
    if end != data_len:
        raise bad(f"the last {data_len - end} bytes of its data belong to no tensor "
                  "(data_offsets)")
    return tensors
