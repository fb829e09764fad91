from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Unpack(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNPACK_AUTO: _ClassVar[Unpack]
    UNPACK_TRUE: _ClassVar[Unpack]
    UNPACK_FALSE: _ClassVar[Unpack]
UNPACK_AUTO: Unpack
UNPACK_TRUE: Unpack
UNPACK_FALSE: Unpack

class StorageRef(_message.Message):
    __slots__ = ("key", "path", "bucket", "unpack", "sha256")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    UNPACK_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    key: str
    path: str
    bucket: str
    unpack: Unpack
    sha256: str
    def __init__(self, key: _Optional[str] = ..., path: _Optional[str] = ..., bucket: _Optional[str] = ..., unpack: _Optional[_Union[Unpack, str]] = ..., sha256: _Optional[str] = ...) -> None: ...
