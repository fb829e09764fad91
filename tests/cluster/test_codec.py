"""Model records in JSON: the StorageRef shape, and records written before it."""

from __future__ import annotations

import json

import pytest

from mesh.cluster.codec import decode, encode, legacy_encoding
from mesh.cluster.records import ModelRecord
from mesh.errors import StoreError
from mesh.storageref import StorageRef, Unpack


def _old(**fields: object) -> bytes:
    """A model record as the codec wrote it before StorageRef."""
    record = {
        "model_id": "m", "format": "onnx", "storage_key": "s3", "storage_path": "m/model.onnx",
        "size_estimate": 0, "measured_size": 0, "measured_sizes": {}, "artifact_bytes": 0,
        "min_copies": 0, "max_copies": 0, "pinned_pods": [], "required_labels": {},
        "preferred_labels": {}, "options": {}, "registered_at": 1.0, "base": "", "version": 1,
        **fields,
    }  # fmt: skip
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def test_a_record_keeps_its_storage_ref_through_json() -> None:
    ref = StorageRef("s3", "m/", bucket="b", unpack=Unpack.TRUE, sha256="ab" * 32)
    record = ModelRecord("m", "onnx", storage=ref, options={"threads": "2"})
    value = encode(record)
    assert json.loads(value)["storage"] == {
        "key": "s3", "path": "m/", "bucket": "b", "unpack": "true", "sha256": "ab" * 32
    }  # fmt: skip
    assert decode(ModelRecord, "k", value) == record


def test_a_record_written_before_storage_ref_reads_as_one() -> None:
    value = _old(options={"threads": "2", "storage.bucket": "b", "storage.unpack": "false"})
    record = decode(ModelRecord, "k", value)
    assert record.storage == StorageRef("s3", "m/model.onnx", bucket="b", unpack=Unpack.FALSE)
    assert dict(record.options) == {"threads": "2"}
    # Written back the old way, it is the value stored: a compare-and-put over it holds.
    assert legacy_encoding(record) == value
    plain = _old()
    assert decode(ModelRecord, "k", plain).storage == StorageRef("s3", "m/model.onnx")
    assert legacy_encoding(decode(ModelRecord, "k", plain)) == plain


def test_old_storage_options_that_do_not_parse_stay_where_they_were() -> None:
    # The pod refuses them at load (INVALID_ARGUMENT), as the puller did: the model stays
    # registered and visible rather than vanishing from the mirror.
    record = decode(ModelRecord, "k", _old(options={"storage.colour": "red"}))
    assert record.storage == StorageRef("s3", "m/model.onnx")
    assert dict(record.options) == {"storage.colour": "red"}


@pytest.mark.parametrize(
    "storage",
    ['"s3:m"', '{"key": 1}', '{"path": "m", "unpack": "maybe"}'],
)
def test_a_storage_that_is_no_storage_ref_is_a_store_error(storage: str) -> None:
    value = f'{{"model_id": "m", "format": "onnx", "storage": {storage}}}'.encode()
    with pytest.raises(StoreError, match="ModelRecord at 'k'"):
        decode(ModelRecord, "k", value)


@pytest.mark.parametrize("option", ["storage.unpack", "storage.bucket", "storage.sha256"])
def test_an_old_storage_option_that_is_no_string_stays_where_it_was(option: str) -> None:
    # Hand-written into etcd: the record still decodes (or is a StoreError), never an error
    # the mirror does not expect (it would reload everything, meet it again, and stall).
    record = decode(ModelRecord, "k", _old(options={option: 1}))
    assert record.storage == StorageRef("s3", "m/model.onnx")
    assert dict(record.options) == {option: 1}
