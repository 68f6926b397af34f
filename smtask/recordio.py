"""RecordIO-protobuf, the input format of SageMaker's built-in algorithms
(``application/x-recordio-protobuf``), written and read without the protobuf package.

SageMaker SDK v3 left ``write_numpy_to_dense_tensor`` and ``write_spmatrix_to_sparse_tensor``
unimplemented; these are the same functions, byte for byte the format of SDK v2. One module
serves both sides: a plain task on the worker writes the data, and the local image's
algorithm stand-ins read it (the image build copies this file in).

The format: each record is framed as ``<magic 0xced7230a><length>`` (two little-endian
uint32), the bytes of an ``aialgs.data.Record`` protobuf message, then zero padding to a
multiple of 4. A record's ``features["values"]`` is a tensor (float32, float64 or int32
values; for a sparse row also ``keys``, the column of each value, and ``shape``, the row's
width) and ``label["values"]`` a one-value tensor.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

MAGIC = 0xCED7230A
# Value's oneof field number and the values' wire format, by tensor type
_TENSORS = {"float32": (2, "<f4"), "float64": (3, "<f8"), "int32": (7, None)}
_BY_FIELD = {field: dtype for field, dtype in _TENSORS.values()}


def write_numpy_to_dense_tensor(file: IO[bytes], array: Any, labels: Any = None) -> None:
    """One record per row of the 2-D ``array``, with ``labels[i]`` as its label."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError("array must be a matrix")
    labels = _check_labels(labels, array.shape[0])
    for index, row in enumerate(array):
        label = None if labels is None else labels[index]
        _write_recordio(file, _record(_tensor(row), label))


def write_spmatrix_to_sparse_tensor(file: IO[bytes], array: Any, labels: Any = None) -> None:
    """One sparse record per row of the scipy sparse matrix ``array``: its non-zero values,
    their columns (``keys``) and the row's width (``shape``)."""
    if not hasattr(array, "tocsr"):
        raise TypeError("array must be a scipy sparse matrix")
    csr = array.tocsr()
    rows, columns = csr.shape
    labels = _check_labels(labels, rows)
    for index in range(rows):
        start, end = csr.indptr[index], csr.indptr[index + 1]
        tensor = _tensor(csr.data[start:end], keys=csr.indices[start:end], shape=[columns])
        _write_recordio(file, _record(tensor, None if labels is None else labels[index]))


def read_records(file: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Each record as ``{"values", "keys" (None when dense), "shape", "label" (None when
    unlabelled)}``, values as float64 arrays."""
    for data in read_recordio(file):
        fields = _fields(data)
        features = _map_value(fields.get(1, []), "values")
        if features is None:
            raise ValueError("a record has no features['values'] tensor")
        label = _map_value(fields.get(2, []), "values")
        yield {**features, "label": None if label is None else float(label["values"][0])}


def read_matrix(file: IO[bytes]) -> tuple[Any, Any]:
    """All records as ``(features, labels)``: a dense float64 matrix (a scipy CSR matrix when
    the records are sparse), and the labels (None when no record has one)."""
    records = list(read_records(file))
    labels = [r["label"] for r in records]
    y = None if all(v is None for v in labels) else np.array(
        [np.nan if v is None else v for v in labels])
    if records and records[0]["keys"] is not None:
        from scipy.sparse import csr_matrix

        width = max(int(r["shape"][0]) if r["shape"] else 0 for r in records)
        indptr = np.cumsum([0, *(len(r["keys"]) for r in records)])
        data = np.concatenate([r["values"] for r in records])
        indices = np.concatenate([r["keys"] for r in records]).astype(np.int64)
        return csr_matrix((data, indices, indptr), shape=(len(records), width)), y
    return np.array([r["values"] for r in records]).reshape(len(records), -1), y


def read_recordio(file: IO[bytes]) -> Iterator[bytes]:
    """The payload of each RecordIO frame."""
    while True:
        header = file.read(8)
        if not header:
            return
        if len(header) < 8:
            raise ValueError("truncated RecordIO header")
        magic, length = struct.unpack("<II", header)
        if magic != MAGIC:
            raise ValueError(f"not RecordIO: magic {magic:#x}, expected {MAGIC:#x}")
        length &= (1 << 29) - 1  # the top 3 bits flag multi-part records, which we never write
        data = file.read(length)
        if len(data) < length:
            raise ValueError("truncated RecordIO record")
        file.read(-length % 4)
        yield data


def _write_recordio(file: IO[bytes], data: bytes) -> None:
    file.write(struct.pack("<II", MAGIC, len(data)))
    file.write(data)
    file.write(b"\0" * (-len(data) % 4))


def _check_labels(labels: Any, rows: int) -> Any:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ValueError(f"labels must be a vector of {rows} values")
    return labels


# --- protobuf wire format: just what Record needs ---------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _type_of(values: Any) -> str:
    kind = np.asarray(values).dtype
    if kind == np.float32:
        return "float32"
    if np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.bool_):
        return "int32"
    return "float64"


def _tensor(values: Any, keys: Any = None, shape: Any = None) -> bytes:
    """A ``Value`` holding a tensor of ``values`` (typed as numpy typed them)."""
    name = _type_of(values)
    number, dtype = _TENSORS[name]
    packed = np.asarray(values).astype(dtype).tobytes() if dtype else \
        b"".join(_varint(int(v) & (2**64 - 1)) for v in np.asarray(values))
    body = _field(1, packed)
    if keys is not None:
        body += _field(2, b"".join(_varint(int(k)) for k in keys))
    if shape is not None:
        body += _field(3, b"".join(_varint(int(s)) for s in shape))
    return _field(number, body)


def _record(features: bytes, label: Any) -> bytes:
    entry = _field(1, b"values") + _field(2, features)
    record = _field(1, entry)
    if label is not None:
        value = np.asarray([label])
        record += _field(2, _field(1, b"values") + _field(2, _tensor(value)))
    return record


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (bytes for length-delimited, ints for varints)."""
    fields: dict[int, list[Any]] = {}
    at = 0
    value: int | bytes
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
        elif wire == 2:
            length, at = _read_varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, at = data[at:at + size], at + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append((wire, value))
    return fields


def _varints(entries: list[Any]) -> list[int]:
    """A repeated integer field, packed or not."""
    out: list[int] = []
    for wire, value in entries:
        if wire == 0:
            out.append(value)
            continue
        at = 0
        while at < len(value):
            number, at = _read_varint(value, at)
            out.append(number)
    return out


def _map_value(entries: list[Any], wanted: str) -> dict[str, Any] | None:
    """The tensor stored under ``wanted`` in a ``map<string, Value>`` field."""
    for _, entry in entries:
        fields = _fields(entry)
        if fields.get(1, [(2, b"")])[0][1].decode() != wanted or 2 not in fields:
            continue
        value = _fields(fields[2][0][1])
        for number, dtype in _BY_FIELD.items():
            if number not in value:
                continue
            tensor = _fields(value[number][0][1])
            raw = tensor.get(1, [])
            if dtype:
                values = np.concatenate([np.frombuffer(v, dtype=dtype) for _, v in raw]) \
                    if raw else np.array([])
            else:  # int32 varints, two's complement in 64 bits
                values = np.array([v - 2**64 if v >= 2**63 else v for v in _varints(raw)])
            keys = _varints(tensor[2]) if 2 in tensor else None
            return {"values": values.astype(np.float64),
                    "keys": None if keys is None else np.array(keys, dtype=np.int64),
                    "shape": _varints(tensor.get(3, []))}
    return None
