"""nnf-dm: the compute-node data-movement daemon (gRPC over a Unix socket) and its client.

Wire-identical with upstream nnf-dm's ``daemons/compute`` API (``api/datamovement.proto``), so sites'
existing Go, Python, C and C++ clients work unchanged. Nothing here is imported by the Slurm hook path.
"""

API_VERSIONS = ("1",)
DEFAULT_SOCKET = "/var/run/nnf-dm.sock"
