"""The emulator's TLS material: a local CA and a server certificate, kept in the data directory.

Clients connect with ``sslmode=verify-full`` and ``sslrootcert=<data dir>/tls/ca.pem``, using
``host=localhost`` or the cluster endpoint (``<id>.dsql.<region>.on.aws`` with
``hostaddr=127.0.0.1``), so the server certificate names localhost, 127.0.0.1, ::1, the endpoint and
``*.dsql.<region>.on.aws``. The CA is made once per data dir; the server certificate is re-issued
when a needed name is missing or it nears expiry.

This module must not open sockets or trust anything: it only writes files (keys 0600) and builds
the server-side `ssl.SSLContext` (TLS 1.2+, ALPN ``postgresql`` for libpq 17's direct TLS).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
ALPN_PROTOCOL = "postgresql"


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate (what clients trust) and the server's certificate and key."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"


def server_names(endpoint: str, region: str, extra: Iterable[str] = ()) -> list[str]:
    """The names the server certificate must cover."""
    names = ["localhost", "127.0.0.1", "::1", endpoint, f"*.dsql.{region}.on.aws"]
    for name in extra:
        if name and name not in names and name not in ("0.0.0.0", "::"):
            names.append(name)
    return names


def ensure_certificates(
    data_dir: Path, names: Iterable[str], *, now: dt.datetime | None = None
) -> TlsFiles:
    """Create the CA (once) and a server certificate covering ``names`` (when needed)."""
    files = TlsFiles(Path(data_dir) / "tls")
    files.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.timezone.utc)
    wanted = list(names)
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        _make_ca(files, now)
        _make_server(files, wanted, now)
    elif not _server_ok(files, wanted, now):
        _make_server(files, wanted, now)
    return files


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The server side: TLS 1.2 or newer, our certificate, ALPN ``postgresql`` offered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.server_cert, files.server_key)
    ctx.set_alpn_protocols([ALPN_PROTOCOL])
    return ctx


def client_context(files: TlsFiles, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context trusting only the emulator's CA (for asyncpg and tests)."""
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    ctx.check_hostname = check_hostname
    return ctx


# --- certificate making --------------------------------------------------------------------------


def _make_ca(files: TlsFiles, now: dt.datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dsql-magic"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Aurora DSQL Emulator Local CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(files.ca_key, _key_pem(key), private=True)
    _write(files.ca_cert, _cert_pem(cert), private=False)


def _make_server(files: TlsFiles, names: list[str], now: dt.datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.ca_key} is not the emulator's CA key: remove the tls directory")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.server_key, _key_pem(key), private=True)
    _write(files.server_cert, _cert_pem(cert), private=False)


def _server_ok(files: TlsFiles, names: list[str], now: dt.datetime) -> bool:
    """True when the server certificate exists, is fresh and covers every wanted name."""
    from cryptography import x509

    if not (files.server_cert.exists() and files.server_key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    have |= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    if not wanted <= have:
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _key_pem(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: object) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert isinstance(cert, x509.Certificate)
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Atomic write; private files (keys) are created 0600."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
