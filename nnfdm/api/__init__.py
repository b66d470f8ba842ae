"""The data-movement API: ``datamovement.proto`` and the Python code generated from it.

The generated modules are committed (so installs need no compiler); after editing the .proto run
``make proto``, which is::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
        --grpclib_python_out=. nnfdm/api/datamovement.proto

``datamovement_pb2_grpc`` holds grpcio's stubs (the client library), ``datamovement_grpc`` grpclib's
service base (the daemon).
"""
