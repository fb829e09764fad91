"""The one storage reference and its validator (mesh.storageref), and its wire form."""

from __future__ import annotations

import doctest

import pytest

import mesh.storageref
from mesh.errors import InvalidIdentifier, InvalidRequest
from mesh.gen import storage_pb2 as spb
from mesh.storageref import StorageRef, Unpack, check_storage, split_legacy_options
from mesh.storagewire import from_message, from_request, to_message

DIGEST = "0123456789abcdef" * 4


def test_the_docstrings_examples_hold() -> None:
    assert doctest.testmod(mesh.storageref).failed == 0


def test_options_parse_from_strings_typed() -> None:
    ref = StorageRef.parse("s3", "m.tar", {"bucket": "b", "unpack": "TRUE", "sha256": DIGEST})
    assert ref == StorageRef("s3", "m.tar", bucket="b", unpack=Unpack.TRUE, sha256=DIGEST)
    assert ref.options() == {"bucket": "b", "unpack": "true", "sha256": DIGEST}
    assert StorageRef.parse("", "m", {}).options() == {}
    assert StorageRef.parse("", "m", {"unpack": ""}).unpack is Unpack.AUTO
    assert str(StorageRef("", "m")) == "default:m" and StorageRef("", "m").entry == "default"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"colour": "red"}, "unknown pull options ['colour']"),
        ({"unpack": "maybe"}, "give auto, true or false"),
        ({"bucket": "a/b"}, "not a bucket name"),
        ({"bucket": "a\nb"}, "not a bucket name"),
        ({"sha256": "abc"}, "64 hex digits"),
    ],
)
def test_bad_options_are_invalid_requests(options: dict[str, str], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words.replace("[", r"\[").replace("]", r"\]")):
        StorageRef.parse("", "m", options)


def test_the_validator_checks_path_and_options_and_lowers_the_digest() -> None:
    ref = check_storage(StorageRef("k", "a/b", sha256=DIGEST.upper()), "model 'm'")
    assert ref == StorageRef("k", "a/b", sha256=DIGEST)
    assert check_storage(StorageRef("k", "a/b/", unpack=Unpack.FALSE)).path == "a/b/"
    # A prefix is many objects: no one digest, and not one archive (the puller refuses both).
    with pytest.raises(InvalidRequest, match="model 'm': option sha256 applies to a single"):
        check_storage(StorageRef("k", "a/b/", sha256=DIGEST), "model 'm'")
    with pytest.raises(InvalidRequest, match="option unpack=true needs a single object"):
        check_storage(StorageRef("k", "a/b/", unpack=Unpack.TRUE))
    with pytest.raises(InvalidIdentifier, match=r"model 'm': storage path '\.\./x'"):
        check_storage(StorageRef(path="../x"), "model 'm'")
    with pytest.raises(InvalidRequest, match="model 'm': storage path is required"):
        check_storage(StorageRef(key="k"), "model 'm'")
    with pytest.raises(InvalidRequest, match="model 'm': option sha256"):
        check_storage(StorageRef(path="x", sha256="zz"), "model 'm'")


def test_the_wire_form_round_trips() -> None:
    ref = StorageRef("k", "p", bucket="b", unpack=Unpack.FALSE, sha256=DIGEST)
    assert from_message(to_message(ref)) == ref
    assert to_message(StorageRef()) == spb.StorageRef()
    with pytest.raises(InvalidRequest, match="unpack"):
        from_message(spb.StorageRef(path="p", unpack=9))  # type: ignore[arg-type]


def test_requests_in_either_shape_give_one_ref_and_the_runtimes_options() -> None:
    runtime = {"threads": "2"}
    legacy = {**runtime, "storage.bucket": "b", "storage.unpack": "false"}
    ref = StorageRef("k", "p", bucket="b", unpack=Unpack.FALSE)
    assert from_request(None, "k", "p", legacy) == (ref, runtime)
    assert from_request(to_message(ref), "", "", runtime) == (ref, runtime)
    assert from_request(to_message(ref), "k", "p", runtime) == (ref, runtime)  # the same twice
    puller = {"bucket": "b", "unpack": "false"}
    assert from_request(None, "k", "p", puller, prefixed=False) == (ref, {})
    with pytest.raises(InvalidRequest, match="disagree"):
        from_request(to_message(ref), "other", "", runtime)
    with pytest.raises(InvalidRequest, match="beside storage"):
        from_request(to_message(ref), "", "", legacy)
    with pytest.raises(InvalidRequest, match="beside storage"):
        from_request(to_message(ref), "", "", puller, prefixed=False)
    assert split_legacy_options(legacy) == (runtime, {"bucket": "b", "unpack": "false"})
