from mesh.gen import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PullRequest(_message.Message):
    __slots__ = ("model_id", "storage_key", "path", "options", "storage")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STORAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    storage_key: str
    path: str
    options: _containers.ScalarMap[str, str]
    storage: _storage_pb2.StorageRef
    def __init__(self, model_id: _Optional[str] = ..., storage_key: _Optional[str] = ..., path: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., storage: _Optional[_Union[_storage_pb2.StorageRef, _Mapping]] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("model_id", "local_path", "size_bytes", "cache_hit", "seconds")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    local_path: str
    size_bytes: int
    cache_hit: bool
    seconds: float
    def __init__(self, model_id: _Optional[str] = ..., local_path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., cache_hit: bool = ..., seconds: _Optional[float] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("was_held",)
    WAS_HELD_FIELD_NUMBER: _ClassVar[int]
    was_held: bool
    def __init__(self, was_held: bool = ...) -> None: ...

class CacheStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CachedArtifact(_message.Message):
    __slots__ = ("storage_key", "source", "local_path", "size_bytes", "model_ids", "last_used")
    STORAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    storage_key: str
    source: str
    local_path: str
    size_bytes: int
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    last_used: float
    def __init__(self, storage_key: _Optional[str] = ..., source: _Optional[str] = ..., local_path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., model_ids: _Optional[_Iterable[str]] = ..., last_used: _Optional[float] = ...) -> None: ...

class CacheStatusResponse(_message.Message):
    __slots__ = ("capacity_bytes", "used_bytes", "reserved_bytes", "in_use_bytes", "artifacts")
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    IN_USE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    capacity_bytes: int
    used_bytes: int
    reserved_bytes: int
    in_use_bytes: int
    artifacts: _containers.RepeatedCompositeFieldContainer[CachedArtifact]
    def __init__(self, capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., reserved_bytes: _Optional[int] = ..., in_use_bytes: _Optional[int] = ..., artifacts: _Optional[_Iterable[_Union[CachedArtifact, _Mapping]]] = ...) -> None: ...
