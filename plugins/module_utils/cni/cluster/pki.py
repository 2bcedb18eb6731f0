"""TLS material for an etcd cluster: one CA, a serving+peer certificate per member, client certs.

Made on the controller with `cryptography` (a dependency of ansible-core, so it is there wherever
Ansible runs); EC P-256 keys, SHA-256. Files are written 0600 (keys) / 0644 (certificates) and an
existing file is never rewritten, so re-running is idempotent and a member keeps its certificate.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Dict, Iterable, List, Tuple

VALID_DAYS = 3650


def _crypto():  # type: ignore[no-untyped-def]
    # imported on use: nodes that only talk to etcd never need it
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _new_key():  # type: ignore[no-untyped-def]
    _, _, serialization, ec, _, _ = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return key, pem


def _load(path: str):  # type: ignore[no-untyped-def]
    x509, _, serialization, _, _, _ = _crypto()
    with open(path + ".key", "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), None)
    with open(path + ".crt", "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    return key, cert


def ensure_ca(directory: str, name: str = "cnikit-etcd-ca") -> bool:
    """`ca.crt`/`ca.key` in `directory`; True when they were made now."""
    base = os.path.join(directory, "ca")
    if os.path.exists(base + ".crt") and os.path.exists(base + ".key"):
        return False
    x509, hashes, serialization, _, _, NameOID = _crypto()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key, pem = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(base + ".key", pem, 0o600)
    _write(base + ".crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def ensure_cert(directory: str, name: str, sans: Iterable[str] = (), server: bool = True,
                client: bool = True) -> bool:
    """`<name>.crt`/`<name>.key` signed by the CA in `directory`; `sans` are IPs or DNS names.
    True when made now (an existing pair is kept: delete it to re-issue)."""
    base = os.path.join(directory, name)
    if os.path.exists(base + ".crt") and os.path.exists(base + ".key"):
        return False
    x509, hashes, serialization, _, EKU, NameOID = _crypto()
    ca_key, ca_cert = _load(os.path.join(directory, "ca"))
    key, pem = _new_key()
    alt: List[object] = []
    for san in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    usages = ([EKU.SERVER_AUTH] if server else []) + ([EKU.CLIENT_AUTH] if client else [])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               # Python 3.13's strict verification requires both key identifiers
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(base + ".key", pem, 0o600)
    _write(base + ".crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def ensure_cluster(directory: str, members: Dict[str, List[str]],
                   clients: Iterable[str] = ("client",)) -> Tuple[bool, List[str]]:
    """CA + one cert per member (SANs: its addresses, its name, 127.0.0.1, localhost) + client
    certs. Returns (changed, the files that were made)."""
    made: List[str] = []
    if ensure_ca(directory):
        made.append("ca")
    for name, addrs in members.items():
        if ensure_cert(directory, name, list(addrs) + [name, "127.0.0.1", "localhost"]):
            made.append(name)
    for name in clients:
        if ensure_cert(directory, name, (), server=False, client=True):
            made.append(name)
    return bool(made), made
