from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Execution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_SERVER: _ClassVar[Execution]
    EXECUTION_AUTO: _ClassVar[Execution]
    EXECUTION_SANDBOX: _ClassVar[Execution]
EXECUTION_SERVER: Execution
EXECUTION_AUTO: Execution
EXECUTION_SANDBOX: Execution

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoaderDescription(_message.Message):
    __slots__ = ("confinement", "trust_roots", "default_trust_root", "child_pool", "fd_socket", "served_models", "max_served_models", "user_code")
    CONFINEMENT_FIELD_NUMBER: _ClassVar[int]
    TRUST_ROOTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TRUST_ROOT_FIELD_NUMBER: _ClassVar[int]
    CHILD_POOL_FIELD_NUMBER: _ClassVar[int]
    FD_SOCKET_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_SERVED_MODELS_FIELD_NUMBER: _ClassVar[int]
    USER_CODE_FIELD_NUMBER: _ClassVar[int]
    confinement: _containers.RepeatedScalarFieldContainer[str]
    trust_roots: _containers.RepeatedScalarFieldContainer[str]
    default_trust_root: str
    child_pool: int
    fd_socket: str
    served_models: int
    max_served_models: int
    user_code: str
    def __init__(self, confinement: _Optional[_Iterable[str]] = ..., trust_roots: _Optional[_Iterable[str]] = ..., default_trust_root: _Optional[str] = ..., child_pool: _Optional[int] = ..., fd_socket: _Optional[str] = ..., served_models: _Optional[int] = ..., max_served_models: _Optional[int] = ..., user_code: _Optional[str] = ...) -> None: ...

class Signer(_message.Message):
    __slots__ = ("identity", "issuer", "workflow_repository", "workflow_ref", "workflow_sha", "workflow_name", "workflow_trigger", "identity_regexp", "key", "certificate_authority")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_REF_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_SHA_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TRIGGER_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_REGEXP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    identity: str
    issuer: str
    workflow_repository: str
    workflow_ref: str
    workflow_sha: str
    workflow_name: str
    workflow_trigger: str
    identity_regexp: str
    key: str
    certificate_authority: str
    def __init__(self, identity: _Optional[str] = ..., issuer: _Optional[str] = ..., workflow_repository: _Optional[str] = ..., workflow_ref: _Optional[str] = ..., workflow_sha: _Optional[str] = ..., workflow_name: _Optional[str] = ..., workflow_trigger: _Optional[str] = ..., identity_regexp: _Optional[str] = ..., key: _Optional[str] = ..., certificate_authority: _Optional[str] = ...) -> None: ...

class VerifyAndLoadRequest(_message.Message):
    __slots__ = ("artefact", "bundle", "signers", "trust_root", "model_name", "trusted_types", "ignore_paths", "accept_fd", "accept_blake3", "omit_untrusted_types", "digest_after_handle", "fd_claim", "execution")
    ARTEFACT_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIGNERS_FIELD_NUMBER: _ClassVar[int]
    TRUST_ROOT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_TYPES_FIELD_NUMBER: _ClassVar[int]
    IGNORE_PATHS_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FD_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_BLAKE3_FIELD_NUMBER: _ClassVar[int]
    OMIT_UNTRUSTED_TYPES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_AFTER_HANDLE_FIELD_NUMBER: _ClassVar[int]
    FD_CLAIM_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    artefact: str
    bundle: str
    signers: _containers.RepeatedCompositeFieldContainer[Signer]
    trust_root: str
    model_name: str
    trusted_types: _containers.RepeatedScalarFieldContainer[str]
    ignore_paths: _containers.RepeatedScalarFieldContainer[str]
    accept_fd: bool
    accept_blake3: bool
    omit_untrusted_types: bool
    digest_after_handle: bool
    fd_claim: str
    execution: Execution
    def __init__(self, artefact: _Optional[str] = ..., bundle: _Optional[str] = ..., signers: _Optional[_Iterable[_Union[Signer, _Mapping]]] = ..., trust_root: _Optional[str] = ..., model_name: _Optional[str] = ..., trusted_types: _Optional[_Iterable[str]] = ..., ignore_paths: _Optional[_Iterable[str]] = ..., accept_fd: _Optional[bool] = ..., accept_blake3: _Optional[bool] = ..., omit_untrusted_types: _Optional[bool] = ..., digest_after_handle: _Optional[bool] = ..., fd_claim: _Optional[str] = ..., execution: _Optional[_Union[Execution, str]] = ...) -> None: ...

class VerificationFacts(_message.Message):
    __slots__ = ("artefact_sha256", "bundle_sha256", "identity", "issuer", "log_index", "integrated_time", "bundle_media_type", "trust_root", "signing_method", "model_file", "verified_files")
    ARTEFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    INTEGRATED_TIME_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRUST_ROOT_FIELD_NUMBER: _ClassVar[int]
    SIGNING_METHOD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FILES_FIELD_NUMBER: _ClassVar[int]
    artefact_sha256: str
    bundle_sha256: str
    identity: str
    issuer: str
    log_index: int
    integrated_time: int
    bundle_media_type: str
    trust_root: str
    signing_method: str
    model_file: str
    verified_files: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, artefact_sha256: _Optional[str] = ..., bundle_sha256: _Optional[str] = ..., identity: _Optional[str] = ..., issuer: _Optional[str] = ..., log_index: _Optional[int] = ..., integrated_time: _Optional[int] = ..., bundle_media_type: _Optional[str] = ..., trust_root: _Optional[str] = ..., signing_method: _Optional[str] = ..., model_file: _Optional[str] = ..., verified_files: _Optional[_Iterable[str]] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "seconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    seconds: float
    def __init__(self, stage: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("facts", "timings", "untrusted_types", "format", "size", "model_sha256", "cached", "fd_handle", "fd_handle_ttl_seconds", "model_blake3", "sandbox_ticket", "sandbox_ticket_ttl_seconds")
    FACTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    UNTRUSTED_TYPES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    FD_HANDLE_FIELD_NUMBER: _ClassVar[int]
    FD_HANDLE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_BLAKE3_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_TICKET_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_TICKET_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    facts: VerificationFacts
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    untrusted_types: _containers.RepeatedScalarFieldContainer[str]
    format: str
    size: int
    model_sha256: str
    cached: bool
    fd_handle: str
    fd_handle_ttl_seconds: float
    model_blake3: str
    sandbox_ticket: str
    sandbox_ticket_ttl_seconds: float
    def __init__(self, facts: _Optional[_Union[VerificationFacts, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., untrusted_types: _Optional[_Iterable[str]] = ..., format: _Optional[str] = ..., size: _Optional[int] = ..., model_sha256: _Optional[str] = ..., cached: _Optional[bool] = ..., fd_handle: _Optional[str] = ..., fd_handle_ttl_seconds: _Optional[float] = ..., model_blake3: _Optional[str] = ..., sandbox_ticket: _Optional[str] = ..., sandbox_ticket_ttl_seconds: _Optional[float] = ...) -> None: ...

class ServeRequest(_message.Message):
    __slots__ = ("load", "sandbox_ticket", "reason", "direct_channel")
    LOAD_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_TICKET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIRECT_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    load: VerifyAndLoadRequest
    sandbox_ticket: str
    reason: str
    direct_channel: bool
    def __init__(self, load: _Optional[_Union[VerifyAndLoadRequest, _Mapping]] = ..., sandbox_ticket: _Optional[str] = ..., reason: _Optional[str] = ..., direct_channel: _Optional[bool] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("handle", "facts", "methods", "reason", "timings", "memory_bytes", "deadline_seconds", "channel_handle", "max_output_bytes")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_HANDLE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    handle: str
    facts: VerificationFacts
    methods: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    memory_bytes: int
    deadline_seconds: float
    channel_handle: str
    max_output_bytes: int
    def __init__(self, handle: _Optional[str] = ..., facts: _Optional[_Union[VerificationFacts, _Mapping]] = ..., methods: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., memory_bytes: _Optional[int] = ..., deadline_seconds: _Optional[float] = ..., channel_handle: _Optional[str] = ..., max_output_bytes: _Optional[int] = ...) -> None: ...

class Array(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data", "object")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    object: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., object: _Optional[bool] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("handle", "method", "inputs", "frame")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    handle: str
    method: str
    inputs: _containers.RepeatedCompositeFieldContainer[Array]
    frame: bool
    def __init__(self, handle: _Optional[str] = ..., method: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Array, _Mapping]]] = ..., frame: _Optional[bool] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("output", "seconds")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    output: Array
    seconds: float
    def __init__(self, output: _Optional[_Union[Array, _Mapping]] = ..., seconds: _Optional[float] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class UnloadResponse(_message.Message):
    __slots__ = ("ended",)
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ended: bool
    def __init__(self, ended: _Optional[bool] = ...) -> None: ...

class ModelDigest(_message.Message):
    __slots__ = ("blake3", "sha256")
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    blake3: str
    sha256: str
    def __init__(self, blake3: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class VerifyAndLoadResponse(_message.Message):
    __slots__ = ("header", "chunk", "digest")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    header: LoadedModel
    chunk: bytes
    digest: ModelDigest
    def __init__(self, header: _Optional[_Union[LoadedModel, _Mapping]] = ..., chunk: _Optional[bytes] = ..., digest: _Optional[_Union[ModelDigest, _Mapping]] = ...) -> None: ...
