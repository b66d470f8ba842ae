"""The .proto is upstream's wire format (DESIGN Part 9), and the committed generated code is its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from nnfdm.api import datamovement_pb2 as pb

REPO = Path(__file__).resolve().parent.parent

# DESIGN Part 9: message -> {field: (number, type)}; enums: name -> value
FIELDS = {
    "DataMovementVersionResponse": {"version": (1, "string"), "apiVersions": (2, "repeated string")},
    "DataMovementWorkflow": {"name": (1, "string"), "namespace": (2, "string")},
    "DataMovementCommandStatus": {
        "command": (1, "string"),
        "progress": (2, "int32"),
        "elapsedTime": (3, "string"),
        "lastMessage": (4, "string"),
        "lastMessageTime": (5, "string"),
    },
    "DataMovementCreateRequest": {
        "workflow": (1, "DataMovementWorkflow"),
        "source": (2, "string"),
        "destination": (3, "string"),
        "dryrun": (4, "bool"),
        "dcpOptions": (5, "string"),
        "logStdout": (6, "bool"),
        "storeStdout": (7, "bool"),
        "slots": (8, "int32"),
        "maxSlots": (9, "int32"),
        "profile": (10, "string"),
        "mpirunOptions": (11, "string"),
    },
    "DataMovementCreateResponse": {"uid": (1, "string"), "status": (2, "Status"), "message": (3, "string")},
    "DataMovementStatusRequest": {
        "workflow": (1, "DataMovementWorkflow"),
        "uid": (2, "string"),
        "maxWaitTime": (3, "int64"),
    },
    "DataMovementStatusResponse": {
        "state": (1, "State"),
        "status": (2, "Status"),
        "message": (3, "string"),
        "commandStatus": (4, "DataMovementCommandStatus"),
        "startTime": (5, "string"),
        "endTime": (6, "string"),
    },
    "DataMovementDeleteRequest": {"workflow": (1, "DataMovementWorkflow"), "uid": (2, "string")},
    "DataMovementDeleteResponse": {"status": (1, "Status"), "message": (2, "string")},
    "DataMovementListRequest": {"workflow": (1, "DataMovementWorkflow")},
    "DataMovementListResponse": {"uids": (1, "repeated string")},
    "DataMovementCancelRequest": {"workflow": (1, "DataMovementWorkflow"), "uid": (2, "string")},
    "DataMovementCancelResponse": {"status": (1, "Status"), "message": (2, "string")},
}
ENUMS = {
    "DataMovementCreateResponse.Status": {"SUCCESS": 0, "FAILED": 1, "INVALID": 2},
    "DataMovementStatusResponse.State": {
        "PENDING": 0,
        "STARTING": 1,
        "RUNNING": 2,
        "COMPLETED": 3,
        "CANCELLING": 4,
        "UNKNOWN_STATE": 5,
    },
    "DataMovementStatusResponse.Status": {
        "INVALID": 0,
        "NOT_FOUND": 1,
        "SUCCESS": 2,
        "FAILED": 3,
        "CANCELLED": 4,
        "UNKNOWN_STATUS": 5,
    },
    "DataMovementDeleteResponse.Status": {
        "INVALID": 0,
        "NOT_FOUND": 1,
        "SUCCESS": 2,
        "ACTIVE": 3,
        "UNKNOWN": 4,
    },
    "DataMovementCancelResponse.Status": {"INVALID": 0, "NOT_FOUND": 1, "SUCCESS": 2, "FAILED": 3},
}
TYPES = {9: "string", 5: "int32", 3: "int64", 8: "bool"}


def _type(field: object) -> str:
    message = getattr(field, "message_type", None)
    enum = getattr(field, "enum_type", None)
    name = message.name if message else enum.name if enum else TYPES[field.type]  # type: ignore[attr-defined]
    return ("repeated " + name) if field.is_repeated else name  # type: ignore[attr-defined]


def test_messages_fields_and_numbers_are_upstreams() -> None:
    assert pb.DESCRIPTOR.package == "datamovement"
    assert set(pb.DESCRIPTOR.message_types_by_name) == set(FIELDS)
    for message, fields in FIELDS.items():
        found = {f.name: (f.number, _type(f)) for f in pb.DESCRIPTOR.message_types_by_name[message].fields}
        assert found == fields, message


def test_enums_are_upstreams() -> None:
    for path, values in ENUMS.items():
        message, enum = path.split(".")
        found = pb.DESCRIPTOR.message_types_by_name[message].enum_types_by_name[enum]
        assert {v.name: v.number for v in found.values} == values, path


def test_service_methods_are_upstreams() -> None:
    service = pb.DESCRIPTOR.services_by_name["DataMover"]
    assert service.full_name == "datamovement.DataMover"
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "Version": ("google.protobuf.Empty", "datamovement.DataMovementVersionResponse"),
        "Create": ("datamovement.DataMovementCreateRequest", "datamovement.DataMovementCreateResponse"),
        "Status": ("datamovement.DataMovementStatusRequest", "datamovement.DataMovementStatusResponse"),
        "Delete": ("datamovement.DataMovementDeleteRequest", "datamovement.DataMovementDeleteResponse"),
        "List": ("datamovement.DataMovementListRequest", "datamovement.DataMovementListResponse"),
        "Cancel": ("datamovement.DataMovementCancelRequest", "datamovement.DataMovementCancelResponse"),
    }


def test_committed_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """Editing the .proto without `make proto` fails here."""
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--descriptor_set_out={out}",
            "nnfdm/api/datamovement.proto",
        ],
        cwd=REPO,
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # protoc adds json_name to descriptor sets, not to generated code
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == fresh
