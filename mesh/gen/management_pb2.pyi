from mesh.gen import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelOptions(_message.Message):
    __slots__ = ("min_copies", "max_copies", "pinned_pods", "required_labels", "runtime_options", "size_estimate", "preferred_labels", "artifact_bytes")
    class RequiredLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RuntimeOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PreferredLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MIN_COPIES_FIELD_NUMBER: _ClassVar[int]
    MAX_COPIES_FIELD_NUMBER: _ClassVar[int]
    PINNED_PODS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_LABELS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SIZE_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_LABELS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    min_copies: int
    max_copies: int
    pinned_pods: _containers.RepeatedScalarFieldContainer[str]
    required_labels: _containers.ScalarMap[str, str]
    runtime_options: _containers.ScalarMap[str, str]
    size_estimate: int
    preferred_labels: _containers.ScalarMap[str, str]
    artifact_bytes: int
    def __init__(self, min_copies: _Optional[int] = ..., max_copies: _Optional[int] = ..., pinned_pods: _Optional[_Iterable[str]] = ..., required_labels: _Optional[_Mapping[str, str]] = ..., runtime_options: _Optional[_Mapping[str, str]] = ..., size_estimate: _Optional[int] = ..., preferred_labels: _Optional[_Mapping[str, str]] = ..., artifact_bytes: _Optional[int] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("model_id", "format", "storage_key", "storage_path", "options", "load_now", "base", "storage")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    STORAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LOAD_NOW_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    format: str
    storage_key: str
    storage_path: str
    options: ModelOptions
    load_now: bool
    base: str
    storage: _storage_pb2.StorageRef
    def __init__(self, model_id: _Optional[str] = ..., format: _Optional[str] = ..., storage_key: _Optional[str] = ..., storage_path: _Optional[str] = ..., options: _Optional[_Union[ModelOptions, _Mapping]] = ..., load_now: bool = ..., base: _Optional[str] = ..., storage: _Optional[_Union[_storage_pb2.StorageRef, _Mapping]] = ...) -> None: ...

class RegisterModelsRequest(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[RegisterModelRequest]
    def __init__(self, models: _Optional[_Iterable[_Union[RegisterModelRequest, _Mapping]]] = ...) -> None: ...

class RegisterModelResult(_message.Message):
    __slots__ = ("model_id", "code", "message", "status")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    code: int
    message: str
    status: ModelStatusResponse
    def __init__(self, model_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., status: _Optional[_Union[ModelStatusResponse, _Mapping]] = ...) -> None: ...

class RegisterModelsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RegisterModelResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RegisterModelResult, _Mapping]]] = ...) -> None: ...

class UnregisterModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UnregisterModelResponse(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: bool = ...) -> None: ...

class GetModelStatusRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class EnsureLoadedRequest(_message.Message):
    __slots__ = ("model_id", "retry")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    retry: bool
    def __init__(self, model_id: _Optional[str] = ..., retry: bool = ...) -> None: ...

class CopyStatus(_message.Message):
    __slots__ = ("pod_id", "state", "size_bytes", "since", "error", "last_used")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    state: str
    size_bytes: int
    since: float
    error: str
    last_used: float
    def __init__(self, pod_id: _Optional[str] = ..., state: _Optional[str] = ..., size_bytes: _Optional[int] = ..., since: _Optional[float] = ..., error: _Optional[str] = ..., last_used: _Optional[float] = ...) -> None: ...

class ModelStatusResponse(_message.Message):
    __slots__ = ("model_id", "format", "storage_key", "storage_path", "options", "copies", "last_failure", "state", "last_used", "host_copies", "storage")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    STORAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    HOST_COPIES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    format: str
    storage_key: str
    storage_path: str
    options: ModelOptions
    copies: _containers.RepeatedCompositeFieldContainer[CopyStatus]
    last_failure: str
    state: str
    last_used: float
    host_copies: _containers.RepeatedCompositeFieldContainer[HostCopyStatus]
    storage: _storage_pb2.StorageRef
    def __init__(self, model_id: _Optional[str] = ..., format: _Optional[str] = ..., storage_key: _Optional[str] = ..., storage_path: _Optional[str] = ..., options: _Optional[_Union[ModelOptions, _Mapping]] = ..., copies: _Optional[_Iterable[_Union[CopyStatus, _Mapping]]] = ..., last_failure: _Optional[str] = ..., state: _Optional[str] = ..., last_used: _Optional[float] = ..., host_copies: _Optional[_Iterable[_Union[HostCopyStatus, _Mapping]]] = ..., storage: _Optional[_Union[_storage_pb2.StorageRef, _Mapping]] = ...) -> None: ...

class HostCopyStatus(_message.Message):
    __slots__ = ("pod_id", "host_bytes")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_BYTES_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    host_bytes: int
    def __init__(self, pod_id: _Optional[str] = ..., host_bytes: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatusResponse]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatusResponse, _Mapping]]] = ...) -> None: ...

class SetVModelRequest(_message.Message):
    __slots__ = ("vmodel_id", "target_model_id", "wait")
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    target_model_id: str
    wait: bool
    def __init__(self, vmodel_id: _Optional[str] = ..., target_model_id: _Optional[str] = ..., wait: bool = ...) -> None: ...

class DeleteVModelRequest(_message.Message):
    __slots__ = ("vmodel_id",)
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    def __init__(self, vmodel_id: _Optional[str] = ...) -> None: ...

class DeleteVModelResponse(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: bool = ...) -> None: ...

class GetVModelStatusRequest(_message.Message):
    __slots__ = ("vmodel_id",)
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    def __init__(self, vmodel_id: _Optional[str] = ...) -> None: ...

class VModelStatusResponse(_message.Message):
    __slots__ = ("vmodel_id", "active_model_id", "target_model_id", "transition", "last_failure")
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    active_model_id: str
    target_model_id: str
    transition: str
    last_failure: str
    def __init__(self, vmodel_id: _Optional[str] = ..., active_model_id: _Optional[str] = ..., target_model_id: _Optional[str] = ..., transition: _Optional[str] = ..., last_failure: _Optional[str] = ...) -> None: ...

class GetMeshStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PodStatus(_message.Message):
    __slots__ = ("pod_id", "address", "capacity_bytes", "used_bytes", "models", "loading_count", "in_flight", "lru_time", "draining", "updated_at", "labels", "runtimes", "host_capacity_bytes", "host_used_bytes", "host_models", "device", "loads_per_second")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOADING_COUNT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LRU_TIME_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    HOST_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOADS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    address: str
    capacity_bytes: int
    used_bytes: int
    models: _containers.RepeatedScalarFieldContainer[str]
    loading_count: int
    in_flight: int
    lru_time: float
    draining: bool
    updated_at: float
    labels: _containers.ScalarMap[str, str]
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    host_capacity_bytes: int
    host_used_bytes: int
    host_models: _containers.RepeatedScalarFieldContainer[str]
    device: str
    loads_per_second: float
    def __init__(self, pod_id: _Optional[str] = ..., address: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., loading_count: _Optional[int] = ..., in_flight: _Optional[int] = ..., lru_time: _Optional[float] = ..., draining: bool = ..., updated_at: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., runtimes: _Optional[_Iterable[str]] = ..., host_capacity_bytes: _Optional[int] = ..., host_used_bytes: _Optional[int] = ..., host_models: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., loads_per_second: _Optional[float] = ...) -> None: ...

class MeshStatusResponse(_message.Message):
    __slots__ = ("pods", "models", "vmodels", "now", "demand", "demand_error")
    PODS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    VMODELS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    DEMAND_ERROR_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[PodStatus]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatusResponse]
    vmodels: _containers.RepeatedCompositeFieldContainer[VModelStatusResponse]
    now: float
    demand: _containers.RepeatedCompositeFieldContainer[PoolDemand]
    demand_error: str
    def __init__(self, pods: _Optional[_Iterable[_Union[PodStatus, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelStatusResponse, _Mapping]]] = ..., vmodels: _Optional[_Iterable[_Union[VModelStatusResponse, _Mapping]]] = ..., now: _Optional[float] = ..., demand: _Optional[_Iterable[_Union[PoolDemand, _Mapping]]] = ..., demand_error: _Optional[str] = ...) -> None: ...

class PoolDemand(_message.Message):
    __slots__ = ("pool", "model_id", "router_id", "held", "bytes_wanted", "since")
    POOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    BYTES_WANTED_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    pool: str
    model_id: str
    router_id: str
    held: int
    bytes_wanted: int
    since: float
    def __init__(self, pool: _Optional[str] = ..., model_id: _Optional[str] = ..., router_id: _Optional[str] = ..., held: _Optional[int] = ..., bytes_wanted: _Optional[int] = ..., since: _Optional[float] = ...) -> None: ...
