"""Run nnf-dm RPCs from a JSON list on stdin with stubs generated from our .proto (on PYTHONPATH).

Used by tests as an ordinary user. Prints a JSON list: each response as a dict (enum values by name,
every field present), or ``{"grpc_error": CODE, "details": ...}``. ``"$uid"`` in an argument is
replaced by the uid of the most recent Create. ``"until_progress": N`` repeats a Status up to N
times until the copy reports progress.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import datamovement_pb2
import datamovement_pb2_grpc
import grpc
from google.protobuf import empty_pb2, json_format

REQUESTS = {
    "Create": datamovement_pb2.DataMovementCreateRequest,
    "Status": datamovement_pb2.DataMovementStatusRequest,
    "Delete": datamovement_pb2.DataMovementDeleteRequest,
    "List": datamovement_pb2.DataMovementListRequest,
    "Cancel": datamovement_pb2.DataMovementCancelRequest,
}


def main() -> None:
    calls = json.load(sys.stdin)
    workflow = {"name": os.environ["DW_WORKFLOW_NAME"], "namespace": os.environ["DW_WORKFLOW_NAMESPACE"]}
    results = []
    last_uid = ""
    with grpc.insecure_channel("unix://" + os.environ["NNF_DM_SOCKET"]) as channel:
        stub = datamovement_pb2_grpc.DataMoverStub(channel)
        for call in calls:
            rpc = call["rpc"]
            if rpc == "sleep":
                time.sleep(call["seconds"])
                results.append({})
                continue
            if rpc == "parallel":  # the same call from `count` threads at once, on the one channel
                with ThreadPoolExecutor(call["count"]) as pool:
                    futures = [
                        pool.submit(one, stub, call["call"], workflow, last_uid) for _ in range(call["count"])
                    ]
                    results.append({"replies": [f.result() for f in futures]})
                continue
            body = one(stub, call, workflow, last_uid)
            for _ in range(call.get("until_progress", 0)):  # bounded: a loaded machine starts copies late
                if body.get("commandStatus", {}).get("progress", 0) > 0 or body.get("state") == "COMPLETED":
                    break
                body = one(stub, call, workflow, last_uid)
            if rpc == "Create" and body.get("uid"):
                last_uid = body["uid"]
            results.append(body)
    json.dump(results, sys.stdout)


def one(stub, call, workflow, last_uid):
    rpc = call["rpc"]
    if rpc == "Version":
        request = empty_pb2.Empty()
    else:
        args = {"workflow": workflow, **call.get("args", {})}
        args = {k: (last_uid if v == "$uid" else v) for k, v in args.items()}
        request = json_format.ParseDict(args, REQUESTS[rpc]())
    try:
        reply = getattr(stub, rpc)(request, timeout=call.get("timeout", 60))
    except grpc.RpcError as exc:
        return {"grpc_error": exc.code().name, "details": exc.details()}
    return json_format.MessageToDict(reply, always_print_fields_with_no_presence=True)


if __name__ == "__main__":
    main()
