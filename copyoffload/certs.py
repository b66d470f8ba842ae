"""The site's copy-offload TLS key and self-signed certificate (upstream's mk-usercontainer-secrets.sh).

One EC secp521r1 key, one self-signed certificate valid 365 days, CN = the first name, a SAN entry for
every Rabbit (DNS) and for any extra names (DNS) or IP addresses (IP). Compute nodes trust it as a CA
at ``/etc/nnf-dm-usercontainer/cert.pem``; every copy-offload server presents it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SERVER_SECRET = "nnf-dm-usercontainer-server-tls"
CLIENT_SECRET = "nnf-dm-usercontainer-client-tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CLIENT_CERT_PATH = "/etc/nnf-dm-usercontainer/cert.pem"
VALID_DAYS = 365


class CertError(Exception):
    """Inputs for the certificate were unusable (no names, a bad SystemConfiguration, ...)."""


def split_names(entries: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sort SAN entries into DNS names and IP addresses, keeping order and dropping repeats."""
    names: list[str] = []
    ips: list[str] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            ip = str(ipaddress.ip_address(entry))
        except ValueError:
            if entry not in names:
                names.append(entry)
        else:
            if ip not in ips:
                ips.append(ip)
    return names, ips


def rabbits_from_systemconfiguration(path: str | os.PathLike[str]) -> list[str]:
    """Names of every storage node of type Rabbit in a SystemConfiguration (YAML or JSON, or a List)."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(Path(path).read_text()))
    except OSError as exc:
        raise CertError(f"unable to read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CertError(f"{path} is not valid YAML: {exc}") from None
    objects: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("items"), list):
            objects.extend(doc["items"])
        elif doc is not None:
            objects.append(doc)
    rabbits: list[str] = []
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        spec = obj.get("spec") or {}
        for node in spec.get("storageNodes") or []:
            if isinstance(node, dict) and node.get("type") == "Rabbit" and node.get("name"):
                name = str(node["name"])
                if name not in rabbits:
                    rabbits.append(name)
    if not rabbits:
        raise CertError(f"{path} lists no storage nodes of type Rabbit (.spec.storageNodes[])")
    return rabbits


def make_certificate(
    names: Sequence[str], ips: Sequence[str] = (), *, days: int = VALID_DAYS
) -> tuple[bytes, bytes]:
    """Return (certificate PEM, key PEM) for a new secp521r1 key and a self-signed cert with these SANs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not names and not ips:
        raise CertError("the certificate needs at least one name or IP address for its SAN")
    key = ec.generate_private_key(ec.SECP521R1())
    common_name = names[0] if names else ips[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def make_site_certificate(
    out_dir: str | os.PathLike[str], names: Sequence[str], ips: Sequence[str] = (), *, days: int = VALID_DAYS
) -> tuple[Path, Path]:
    """Write ``cert.pem`` (0644) and ``key.pem`` (0600) into ``out_dir``; return their paths."""
    cert_pem, key_pem = make_certificate(names, ips, days=days)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / CERT_FILE, out / KEY_FILE
    write_private(key_path, key_pem, 0o600)
    write_private(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Write a file that is never, even briefly, more readable than ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def kubernetes_secrets(
    cert_pem: bytes, key_pem: bytes, namespace: str = "default"
) -> dict[str, dict[str, Any]]:
    """The two Secrets upstream's tool creates, keyed by a file name to write them to."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    server = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SERVER_SECRET, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)},
    }
    client = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CLIENT_SECRET, "namespace": namespace},
        "type": "Opaque",
        "data": {"tls.crt": b64(cert_pem)},
    }
    return {SERVER_SECRET + ".yaml": server, CLIENT_SECRET + ".yaml": client}


def write_kubernetes_secrets(out_dir: str | os.PathLike[str], cert_path: Path, key_path: Path) -> list[Path]:
    """Write the Secret manifests next to the files (the server one holds the key: mode 0600)."""
    import yaml

    out = Path(out_dir)
    written = []
    for filename, obj in kubernetes_secrets(cert_path.read_bytes(), key_path.read_bytes()).items():
        path = out / filename
        write_private(path, yaml.safe_dump(obj, sort_keys=False).encode(), 0o600)
        written.append(path)
    return written
