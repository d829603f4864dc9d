"""TLS for both servers from the settings' PEM files; with a CA file, clients must present a certificate."""

from __future__ import annotations

import ssl

import grpc


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def http_ssl_context(cert_file: str, key_file: str, ca_file: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def grpc_credentials(cert_file: str, key_file: str, ca_file: str = "") -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(_read(key_file), _read(cert_file))],
        root_certificates=_read(ca_file) if ca_file else None,
        require_client_auth=bool(ca_file),
    )
