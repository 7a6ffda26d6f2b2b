"""A GGUF file read without parsing its tensors: the header's architecture and tensor count,
and an id of the file's content.

    gguf_header("m.gguf")                      # ('llama', 272)
    content_id("m.gguf", cache / "ids.json")   # sha256 of the bytes, hex

The content id hashes the whole file once per (resolved path, size, mtime) and remembers it in
`index` (a small JSON file), so a later start costs a `stat` and a read of that file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

from sliceserve.model.config import ModelLoadError

_CHUNK_BYTES = 1 << 20


def content_id(path: str | Path, index: Path) -> str:
    """The sha256 (hex) of the file's bytes: the same for every copy of one file. Memoized in
    `index` by the file's resolved path, size and mtime; the index is a cache only (a missing,
    unreadable or unwritable one costs a rehash, never an error)."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = f"{resolved}|{st.st_size}|{st.st_mtime_ns}"
    known = _read_index(index)
    digest = known.get(key)
    if isinstance(digest, str) and len(digest) == 64:
        return digest
    sha = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            sha.update(chunk)
    digest = sha.hexdigest()
    _write_index(index, {**_read_index(index), key: digest})
    return digest


def _read_index(index: Path) -> dict[str, object]:
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_index(index: Path, entries: dict[str, object]) -> None:
    """Atomically (a temporary file renamed into place): readers see one whole version."""
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{index.name}.", dir=index.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=0, sort_keys=True)
        os.replace(tmp, index)
    except OSError:
        pass  # a read-only cache: the id is recomputed next time


def gguf_architecture(path: str | Path) -> str:
    """`general.architecture` of a GGUF file, read from its header (cheap; no tensors parsed)."""
    return gguf_header(path)[0]


def gguf_header(path: str | Path) -> tuple[str, int]:
    """(architecture, number of tensors) from a GGUF header; ModelLoadError if it is not one."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes)")
        try:
            _version, num_tensors, num_kv = struct.unpack("<IQQ", _read(f, 20))
            for _ in range(num_kv):
                key = _read_string(f)
                (value_type,) = struct.unpack("<I", _read(f, 4))
                if key == "general.architecture" and value_type == _GGUF_STRING:
                    return _read_string(f), num_tensors
                _skip_value(f, value_type)
        except (struct.error, UnicodeDecodeError, ValueError) as e:
            raise ModelLoadError(f"{path} has a corrupt GGUF header: {e}") from None
    raise ModelLoadError(f"{path} has no general.architecture in its GGUF header")


_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _read(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ValueError("file ends inside the header")
    return data


def _read_string(f: BinaryIO) -> str:
    (size,) = struct.unpack("<Q", _read(f, 8))
    return _read(f, size).decode("utf-8")


def _skip_value(f: BinaryIO, value_type: int) -> None:
    if value_type == _GGUF_STRING:
        (size,) = struct.unpack("<Q", _read(f, 8))
        f.seek(size, os.SEEK_CUR)
    elif value_type == _GGUF_ARRAY:
        item_type, count = struct.unpack("<IQ", _read(f, 12))
        if item_type in _GGUF_SCALAR_SIZES:
            f.seek(_GGUF_SCALAR_SIZES[item_type] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, item_type)
    elif value_type in _GGUF_SCALAR_SIZES:
        f.seek(_GGUF_SCALAR_SIZES[value_type], os.SEEK_CUR)
    else:
        raise ValueError(f"unknown GGUF value type {value_type}")
