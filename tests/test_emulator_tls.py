"""The emulator's CA and server certificate: names, reuse, renewal, and a real TLS handshake."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from dsql_magic.emulator.tls import (
    TlsFiles,
    client_context,
    ensure_certificates,
    server_context,
    server_names,
)

ENDPOINT = "abc123.dsql.us-east-1.on.aws"
NAMES = server_names(ENDPOINT, "us-east-1")


def handshake(files: TlsFiles, server_hostname: str) -> str | None:
    """A real TLS handshake over a socket pair; returns the negotiated ALPN protocol."""
    server_sock, client_sock = socket.socketpair()
    server_ctx = server_context(files)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    ctx = client_context(files)
    ctx.set_alpn_protocols(["postgresql"])
    try:
        with ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            proto = tls.selected_alpn_protocol()
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(b"x")
            return proto
    finally:
        client_sock.close()
        thread.join(10)


def sans(files: TlsFiles) -> set[str]:
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_certificates(tmp_path_factory.mktemp("tls"), NAMES)


def test_certificate_covers_dsql_names(files: TlsFiles) -> None:
    assert sans(files) == {
        "localhost",
        "127.0.0.1",
        "::1",
        ENDPOINT,
        "*.dsql.us-east-1.on.aws",
    }


def test_keys_are_private(files: TlsFiles) -> None:
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "hostname", ["localhost", "127.0.0.1", ENDPOINT, "other.dsql.us-east-1.on.aws"]
)
def test_verify_full_handshake(files: TlsFiles, hostname: str) -> None:
    assert handshake(files, hostname) == "postgresql"


def test_wrong_hostname_fails_verification(files: TlsFiles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(files, "example.com")


def test_other_ca_is_not_trusted(files: TlsFiles, tmp_path: Path) -> None:
    other = ensure_certificates(tmp_path, NAMES)
    mixed = TlsFiles(tmp_path / "mixed")
    mixed.directory.mkdir()
    for name in ("server_cert", "server_key"):
        getattr(mixed, name).write_bytes(getattr(files, name).read_bytes())
    mixed.ca_cert.write_bytes(other.ca_cert.read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(mixed, "localhost")


def test_reuse_and_reissue(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, NAMES)
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    ensure_certificates(tmp_path, NAMES)
    assert first.server_cert.read_bytes() == server  # reused as is
    ensure_certificates(tmp_path, server_names("other", "eu-west-1"))
    assert first.ca_cert.read_bytes() == ca  # same CA: clients keep trusting it
    assert first.server_cert.read_bytes() != server
    assert "other" in sans(first)
    renewed = first.server_cert.read_bytes()
    far = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=820)
    ensure_certificates(tmp_path, server_names("other", "eu-west-1"), now=far)
    assert first.server_cert.read_bytes() != renewed  # near expiry: re-issued
