"""The copy-offload port chosen at Setup stays the job's until PreRun (issue 11.10).

Another ordinary user who binds that port between Setup and PreRun would make the job fail at PreRun;
the local backend now starts the server at Setup, listening but held, and lets it serve at PreRun.
"""

from __future__ import annotations

import pwd
import subprocess
import sys

from copyoffload.client import CopyOffloadClient
from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
from tests.conftest import needs_root

pytestmark = needs_root

DIRECTIVES = [
    "#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload",
    "#DW container name=co profile=copy-offload-default",
]

# Tries every way an ordinary user can take a TCP port on this host; prints what succeeded.
SQUATTER = """
import socket, sys
port = int(sys.argv[1])
taken = []
for host in ("127.0.0.1", "0.0.0.0"):
    for reuse in (False, True):
        s = socket.socket()
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind((host, port))
            s.listen()
            taken.append(f"{host} reuse={reuse}")
        except OSError:
            pass
        s.close()
print(";".join(taken))
"""


def test_another_user_cannot_bind_the_reserved_port_between_setup_and_prerun(
    local_config: Config, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    lc = Lifecycle(local_config, LocalBackend(local_config))
    name = lc.create(wlm="slurm", job_id=5, uid=job_user.pw_uid, gid=job_user.pw_gid, directives=DIRECTIVES)
    try:
        lc.walk(name, ["Setup", "DataIn"])
        port = lc.environment(name)["NNF_CONTAINER_PORTS"]
        squat = subprocess.run(
            [sys.executable, "-c", SQUATTER, port],
            user=other_user.pw_uid,
            group=other_user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert squat.returncode == 0, squat.stderr
        assert squat.stdout.strip() == ""  # no way in: the job's server holds the port
        lc.advance_to(name, "PreRun")
        with CopyOffloadClient(environ=lc.environment(name)) as co:
            assert co.hello() == "hello back at ya"
    finally:
        lc.teardown(name, hurry=True)


def test_a_held_server_serves_nothing_before_prerun(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    import socket

    lc = Lifecycle(local_config, LocalBackend(local_config))
    name = lc.create(wlm="slurm", job_id=6, uid=job_user.pw_uid, gid=job_user.pw_gid, directives=DIRECTIVES)
    try:
        lc.walk(name, ["Setup"])
        port = int(lc.environment(name)["NNF_CONTAINER_PORTS"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = sock.recv(100)
            except TimeoutError:
                answer = b"(nothing yet)"
        assert answer == b"(nothing yet)"
    finally:
        lc.teardown(name, hurry=True)
