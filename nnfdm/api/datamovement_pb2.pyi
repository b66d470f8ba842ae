from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataMovementVersionResponse(_message.Message):
    __slots__ = ("version", "apiVersions")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APIVERSIONS_FIELD_NUMBER: _ClassVar[int]
    version: str
    apiVersions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., apiVersions: _Optional[_Iterable[str]] = ...) -> None: ...

class DataMovementWorkflow(_message.Message):
    __slots__ = ("name", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class DataMovementCommandStatus(_message.Message):
    __slots__ = ("command", "progress", "elapsedTime", "lastMessage", "lastMessageTime")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ELAPSEDTIME_FIELD_NUMBER: _ClassVar[int]
    LASTMESSAGE_FIELD_NUMBER: _ClassVar[int]
    LASTMESSAGETIME_FIELD_NUMBER: _ClassVar[int]
    command: str
    progress: int
    elapsedTime: str
    lastMessage: str
    lastMessageTime: str
    def __init__(self, command: _Optional[str] = ..., progress: _Optional[int] = ..., elapsedTime: _Optional[str] = ..., lastMessage: _Optional[str] = ..., lastMessageTime: _Optional[str] = ...) -> None: ...

class DataMovementCreateRequest(_message.Message):
    __slots__ = ("workflow", "source", "destination", "dryrun", "dcpOptions", "logStdout", "storeStdout", "slots", "maxSlots", "profile", "mpirunOptions")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    DRYRUN_FIELD_NUMBER: _ClassVar[int]
    DCPOPTIONS_FIELD_NUMBER: _ClassVar[int]
    LOGSTDOUT_FIELD_NUMBER: _ClassVar[int]
    STORESTDOUT_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    MAXSLOTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    MPIRUNOPTIONS_FIELD_NUMBER: _ClassVar[int]
    workflow: DataMovementWorkflow
    source: str
    destination: str
    dryrun: bool
    dcpOptions: str
    logStdout: bool
    storeStdout: bool
    slots: int
    maxSlots: int
    profile: str
    mpirunOptions: str
    def __init__(self, workflow: _Optional[_Union[DataMovementWorkflow, _Mapping]] = ..., source: _Optional[str] = ..., destination: _Optional[str] = ..., dryrun: _Optional[bool] = ..., dcpOptions: _Optional[str] = ..., logStdout: _Optional[bool] = ..., storeStdout: _Optional[bool] = ..., slots: _Optional[int] = ..., maxSlots: _Optional[int] = ..., profile: _Optional[str] = ..., mpirunOptions: _Optional[str] = ...) -> None: ...

class DataMovementCreateResponse(_message.Message):
    __slots__ = ("uid", "status", "message")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SUCCESS: _ClassVar[DataMovementCreateResponse.Status]
        FAILED: _ClassVar[DataMovementCreateResponse.Status]
        INVALID: _ClassVar[DataMovementCreateResponse.Status]
    SUCCESS: DataMovementCreateResponse.Status
    FAILED: DataMovementCreateResponse.Status
    INVALID: DataMovementCreateResponse.Status
    UID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    uid: str
    status: DataMovementCreateResponse.Status
    message: str
    def __init__(self, uid: _Optional[str] = ..., status: _Optional[_Union[DataMovementCreateResponse.Status, str]] = ..., message: _Optional[str] = ...) -> None: ...

class DataMovementStatusRequest(_message.Message):
    __slots__ = ("workflow", "uid", "maxWaitTime")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    MAXWAITTIME_FIELD_NUMBER: _ClassVar[int]
    workflow: DataMovementWorkflow
    uid: str
    maxWaitTime: int
    def __init__(self, workflow: _Optional[_Union[DataMovementWorkflow, _Mapping]] = ..., uid: _Optional[str] = ..., maxWaitTime: _Optional[int] = ...) -> None: ...

class DataMovementStatusResponse(_message.Message):
    __slots__ = ("state", "status", "message", "commandStatus", "startTime", "endTime")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PENDING: _ClassVar[DataMovementStatusResponse.State]
        STARTING: _ClassVar[DataMovementStatusResponse.State]
        RUNNING: _ClassVar[DataMovementStatusResponse.State]
        COMPLETED: _ClassVar[DataMovementStatusResponse.State]
        CANCELLING: _ClassVar[DataMovementStatusResponse.State]
        UNKNOWN_STATE: _ClassVar[DataMovementStatusResponse.State]
    PENDING: DataMovementStatusResponse.State
    STARTING: DataMovementStatusResponse.State
    RUNNING: DataMovementStatusResponse.State
    COMPLETED: DataMovementStatusResponse.State
    CANCELLING: DataMovementStatusResponse.State
    UNKNOWN_STATE: DataMovementStatusResponse.State
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INVALID: _ClassVar[DataMovementStatusResponse.Status]
        NOT_FOUND: _ClassVar[DataMovementStatusResponse.Status]
        SUCCESS: _ClassVar[DataMovementStatusResponse.Status]
        FAILED: _ClassVar[DataMovementStatusResponse.Status]
        CANCELLED: _ClassVar[DataMovementStatusResponse.Status]
        UNKNOWN_STATUS: _ClassVar[DataMovementStatusResponse.Status]
    INVALID: DataMovementStatusResponse.Status
    NOT_FOUND: DataMovementStatusResponse.Status
    SUCCESS: DataMovementStatusResponse.Status
    FAILED: DataMovementStatusResponse.Status
    CANCELLED: DataMovementStatusResponse.Status
    UNKNOWN_STATUS: DataMovementStatusResponse.Status
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COMMANDSTATUS_FIELD_NUMBER: _ClassVar[int]
    STARTTIME_FIELD_NUMBER: _ClassVar[int]
    ENDTIME_FIELD_NUMBER: _ClassVar[int]
    state: DataMovementStatusResponse.State
    status: DataMovementStatusResponse.Status
    message: str
    commandStatus: DataMovementCommandStatus
    startTime: str
    endTime: str
    def __init__(self, state: _Optional[_Union[DataMovementStatusResponse.State, str]] = ..., status: _Optional[_Union[DataMovementStatusResponse.Status, str]] = ..., message: _Optional[str] = ..., commandStatus: _Optional[_Union[DataMovementCommandStatus, _Mapping]] = ..., startTime: _Optional[str] = ..., endTime: _Optional[str] = ...) -> None: ...

class DataMovementDeleteRequest(_message.Message):
    __slots__ = ("workflow", "uid")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    workflow: DataMovementWorkflow
    uid: str
    def __init__(self, workflow: _Optional[_Union[DataMovementWorkflow, _Mapping]] = ..., uid: _Optional[str] = ...) -> None: ...

class DataMovementDeleteResponse(_message.Message):
    __slots__ = ("status", "message")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INVALID: _ClassVar[DataMovementDeleteResponse.Status]
        NOT_FOUND: _ClassVar[DataMovementDeleteResponse.Status]
        SUCCESS: _ClassVar[DataMovementDeleteResponse.Status]
        ACTIVE: _ClassVar[DataMovementDeleteResponse.Status]
        UNKNOWN: _ClassVar[DataMovementDeleteResponse.Status]
    INVALID: DataMovementDeleteResponse.Status
    NOT_FOUND: DataMovementDeleteResponse.Status
    SUCCESS: DataMovementDeleteResponse.Status
    ACTIVE: DataMovementDeleteResponse.Status
    UNKNOWN: DataMovementDeleteResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: DataMovementDeleteResponse.Status
    message: str
    def __init__(self, status: _Optional[_Union[DataMovementDeleteResponse.Status, str]] = ..., message: _Optional[str] = ...) -> None: ...

class DataMovementListRequest(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: DataMovementWorkflow
    def __init__(self, workflow: _Optional[_Union[DataMovementWorkflow, _Mapping]] = ...) -> None: ...

class DataMovementListResponse(_message.Message):
    __slots__ = ("uids",)
    UIDS_FIELD_NUMBER: _ClassVar[int]
    uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uids: _Optional[_Iterable[str]] = ...) -> None: ...

class DataMovementCancelRequest(_message.Message):
    __slots__ = ("workflow", "uid")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    workflow: DataMovementWorkflow
    uid: str
    def __init__(self, workflow: _Optional[_Union[DataMovementWorkflow, _Mapping]] = ..., uid: _Optional[str] = ...) -> None: ...

class DataMovementCancelResponse(_message.Message):
    __slots__ = ("status", "message")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INVALID: _ClassVar[DataMovementCancelResponse.Status]
        NOT_FOUND: _ClassVar[DataMovementCancelResponse.Status]
        SUCCESS: _ClassVar[DataMovementCancelResponse.Status]
        FAILED: _ClassVar[DataMovementCancelResponse.Status]
    INVALID: DataMovementCancelResponse.Status
    NOT_FOUND: DataMovementCancelResponse.Status
    SUCCESS: DataMovementCancelResponse.Status
    FAILED: DataMovementCancelResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: DataMovementCancelResponse.Status
    message: str
    def __init__(self, status: _Optional[_Union[DataMovementCancelResponse.Status, str]] = ..., message: _Optional[str] = ...) -> None: ...
