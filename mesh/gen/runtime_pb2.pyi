from mesh.gen import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelRequest(_message.Message):
    __slots__ = ("model_id", "format", "path", "options", "storage_key", "storage_path", "storage")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    STORAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    format: str
    path: str
    options: _containers.ScalarMap[str, str]
    storage_key: str
    storage_path: str
    storage: _storage_pb2.StorageRef
    def __init__(self, model_id: _Optional[str] = ..., format: _Optional[str] = ..., path: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., storage_key: _Optional[str] = ..., storage_path: _Optional[str] = ..., storage: _Optional[_Union[_storage_pb2.StorageRef, _Mapping]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model_id", "size_bytes", "measured_bytes", "estimated_bytes", "load_seconds", "already_loaded", "evicted", "artifact_bytes")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_LOADED_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    size_bytes: int
    measured_bytes: int
    estimated_bytes: int
    load_seconds: float
    already_loaded: bool
    evicted: _containers.RepeatedScalarFieldContainer[str]
    artifact_bytes: int
    def __init__(self, model_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., measured_bytes: _Optional[int] = ..., estimated_bytes: _Optional[int] = ..., load_seconds: _Optional[float] = ..., already_loaded: bool = ..., evicted: _Optional[_Iterable[str]] = ..., artifact_bytes: _Optional[int] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("was_loaded", "freed_bytes")
    WAS_LOADED_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    was_loaded: bool
    freed_bytes: int
    def __init__(self, was_loaded: bool = ..., freed_bytes: _Optional[int] = ...) -> None: ...

class RuntimeStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model_id", "format", "state", "size_bytes", "measured_bytes", "estimated_bytes", "last_used", "in_flight", "loaded_at", "error", "failed_at", "device_bytes", "host_bytes", "host_copy_is_model")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LOADING: _ClassVar[ModelStatus.State]
        LOADED: _ClassVar[ModelStatus.State]
        FAILED: _ClassVar[ModelStatus.State]
        DEMOTED: _ClassVar[ModelStatus.State]
    LOADING: ModelStatus.State
    LOADED: ModelStatus.State
    FAILED: ModelStatus.State
    DEMOTED: ModelStatus.State
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_COPY_IS_MODEL_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    format: str
    state: ModelStatus.State
    size_bytes: int
    measured_bytes: int
    estimated_bytes: int
    last_used: float
    in_flight: int
    loaded_at: float
    error: str
    failed_at: float
    device_bytes: int
    host_bytes: int
    host_copy_is_model: bool
    def __init__(self, model_id: _Optional[str] = ..., format: _Optional[str] = ..., state: _Optional[_Union[ModelStatus.State, str]] = ..., size_bytes: _Optional[int] = ..., measured_bytes: _Optional[int] = ..., estimated_bytes: _Optional[int] = ..., last_used: _Optional[float] = ..., in_flight: _Optional[int] = ..., loaded_at: _Optional[float] = ..., error: _Optional[str] = ..., failed_at: _Optional[float] = ..., device_bytes: _Optional[int] = ..., host_bytes: _Optional[int] = ..., host_copy_is_model: bool = ...) -> None: ...

class RuntimeStatusResponse(_message.Message):
    __slots__ = ("state", "capacity_bytes", "used_bytes", "models", "loading_count", "runtimes", "device", "host_capacity_bytes", "host_used_bytes", "demoted")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STARTING: _ClassVar[RuntimeStatusResponse.State]
        READY: _ClassVar[RuntimeStatusResponse.State]
        DRAINING: _ClassVar[RuntimeStatusResponse.State]
    STARTING: RuntimeStatusResponse.State
    READY: RuntimeStatusResponse.State
    DRAINING: RuntimeStatusResponse.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOADING_COUNT_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HOST_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEMOTED_FIELD_NUMBER: _ClassVar[int]
    state: RuntimeStatusResponse.State
    capacity_bytes: int
    used_bytes: int
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    loading_count: int
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    device: str
    host_capacity_bytes: int
    host_used_bytes: int
    demoted: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, state: _Optional[_Union[RuntimeStatusResponse.State, str]] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., loading_count: _Optional[int] = ..., runtimes: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., host_capacity_bytes: _Optional[int] = ..., host_used_bytes: _Optional[int] = ..., demoted: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...
