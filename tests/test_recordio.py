"""RecordIO-protobuf (smtask.recordio), checked against Google's protobuf runtime built from
the Record message of SageMaker's algorithms (aialgs.data, record.proto)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from smtask import recordio


@pytest.fixture(scope="module")
def Record():  # noqa: N802 - a message class
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="record.proto", package="aialgs.data",
                                               syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto  # noqa: N806

    def message(name, *fields, map_entry=False):
        msg = proto.message_type.add(name=name)
        if map_entry:
            msg.options.map_entry = True
        for number, field_name, kind, label, type_name, packed in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if packed:
                field.options.packed = True
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    for name, kind in (("Float32Tensor", F.TYPE_FLOAT), ("Float64Tensor", F.TYPE_DOUBLE),
                       ("Int32Tensor", F.TYPE_INT32)):
        message(name, (1, "values", kind, rep, None, True), (2, "keys", F.TYPE_UINT64, rep, None, True),
                (3, "shape", F.TYPE_UINT64, rep, None, True))
    value = message("Value", *((number, f"{kind}_tensor", F.TYPE_MESSAGE, opt,
                               f".aialgs.data.{kind.title()}Tensor", False)
                              for number, kind in ((2, "float32"), (3, "float64"), (7, "int32"))))
    value.oneof_decl.add(name="value")
    for field in value.field:
        field.oneof_index = 0
    record = message("Record",
                     (1, "features", F.TYPE_MESSAGE, rep, ".aialgs.data.Record.FeaturesEntry", False),
                     (2, "label", F.TYPE_MESSAGE, rep, ".aialgs.data.Record.LabelEntry", False),
                     (3, "uid", F.TYPE_STRING, opt, None, False))
    for entry in ("FeaturesEntry", "LabelEntry"):
        nested = record.nested_type.add(name=entry)
        nested.options.map_entry = True
        nested.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
        nested.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt,
                         type_name=".aialgs.data.Value")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("aialgs.data.Record"))


def frames(data: bytes) -> list[bytes]:
    return list(recordio.read_recordio(io.BytesIO(data)))


def test_dense_records_parse_with_googles_protobuf(Record):  # noqa: N803
    buffer = io.BytesIO()
    array = np.array([[1.5, -2.0, 0.0], [3.25, 4.0, 5.0]], dtype=np.float32)
    recordio.write_numpy_to_dense_tensor(buffer, array, np.array([1.0, 0.0], dtype=np.float32))
    payloads = frames(buffer.getvalue())
    assert len(payloads) == 2 and len(buffer.getvalue()) % 4 == 0
    for row, label, payload in zip(array, (1.0, 0.0), payloads, strict=True):
        record = Record.FromString(payload)
        assert list(record.features["values"].float32_tensor.values) == list(row)
        assert list(record.label["values"].float32_tensor.values) == [label]


def test_sparse_records_parse_with_googles_protobuf_and_read_back(Record):  # noqa: N803
    matrix = csr_matrix(np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    buffer = io.BytesIO()
    recordio.write_spmatrix_to_sparse_tensor(buffer, matrix, np.array([4.0, 2.0], dtype=np.float32))
    record = Record.FromString(frames(buffer.getvalue())[0])
    tensor = record.features["values"].float32_tensor
    assert (list(tensor.values), list(tensor.keys), list(tensor.shape)) == ([1, 1], [1, 3], [4])
    features, labels = recordio.read_matrix(io.BytesIO(buffer.getvalue()))
    assert (features.toarray() == matrix.toarray()).all() and list(labels) == [4.0, 2.0]


@pytest.mark.parametrize("kind", ["float32_tensor", "float64_tensor", "int32_tensor"])
def test_records_written_by_googles_protobuf_read_back(Record, kind):  # noqa: N803
    record = Record()
    tensor = getattr(record.features["values"], kind)
    tensor.values.extend([3, -7, 11])
    getattr(record.label["values"], kind).values.extend([2])
    payload = record.SerializeToString()
    framed = struct.pack("<II", recordio.MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)
    features, labels = recordio.read_matrix(io.BytesIO(framed * 2))
    assert features.tolist() == [[3, -7, 11]] * 2 and labels.tolist() == [2, 2]


def test_unlabelled_records_read_with_no_labels():
    buffer = io.BytesIO()
    recordio.write_numpy_to_dense_tensor(buffer, np.eye(2))
    features, labels = recordio.read_matrix(io.BytesIO(buffer.getvalue()))
    assert labels is None and features.tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("data,problem", [(b"\x01\x02\x03\x04\x00\x00\x00\x00", "not RecordIO"),
                                          (b"\x0a\x23", "truncated"),
                                          (struct.pack("<II", recordio.MAGIC, 40) + b"x", "truncated")])
def test_bad_input_is_refused_by_name(data, problem):
    with pytest.raises(ValueError, match=problem):
        recordio.read_matrix(io.BytesIO(data))


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="matrix"):
        recordio.write_numpy_to_dense_tensor(io.BytesIO(), np.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        recordio.write_numpy_to_dense_tensor(io.BytesIO(), np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(TypeError, match="sparse"):
        recordio.write_spmatrix_to_sparse_tensor(io.BytesIO(), np.zeros((3, 2)))
