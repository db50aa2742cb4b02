"""A self-signed certificate for the local simulated service, so the pooling lesson can show what TLS costs.

Real endpoints speak HTTPS: a new connection costs a TCP handshake *and* a TLS handshake (key exchange,
certificate signature, its verification by the client), which connection reuse saves. To make that cost
visible offline the lab makes its own certificate for `127.0.0.1`/`localhost`, serves the sim over HTTPS with
it, and gives clients an `ssl.SSLContext` that trusts exactly that certificate (never `verify=False`, which
would skip the very verification whose cost we want to see).

The certificate is made with the `cryptography` package when it is installed, else with the `openssl`
command line tool; both give the same kind of certificate (ECDSA P-256 by default, what large API front
ends serve; `key_type="rsa"` for RSA-2048).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Backend", "KeyType", "SelfSignedCert", "TLSError", "available_backends", "make_self_signed"]

KeyType = Literal["ec", "rsa"]
Backend = Literal["auto", "cryptography", "openssl"]
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


class TLSError(RuntimeError):
    """No way to make a certificate here, or the one asked for is invalid; the message says what to do."""


@dataclass(frozen=True)
class SelfSignedCert:
    """A certificate and its private key on disk (PEM), and the names it is valid for."""

    cert_path: Path
    key_path: Path
    hosts: tuple[str, ...]
    backend: str

    def client_context(self, *, alpn: Sequence[str] | None = None) -> ssl.SSLContext:
        """A client context that trusts this certificate only, with full verification (hostname included)."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def server_context(self, *, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
        """A server context for this certificate; `alpn` lists the protocols the server will agree to."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_path), str(self.key_path))
        context.set_alpn_protocols(list(alpn))
        return context

    def sim_args(self) -> list[str]:
        """The command-line flags that make `python -m labkit.sim` serve HTTPS with this certificate."""
        return ["--tls-cert", str(self.cert_path), "--tls-key", str(self.key_path)]


def available_backends() -> list[str]:
    """Which ways of making a certificate work here, in the order `backend="auto"` tries them."""
    found = []
    if importlib.util.find_spec("cryptography") is not None:
        found.append("cryptography")
    if shutil.which("openssl"):
        found.append("openssl")
    return found


def make_self_signed(
    directory: str | os.PathLike[str] | None = None,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 7,
    key_type: KeyType = "ec",
    backend: Backend = "auto",
) -> SelfSignedCert:
    """Write `cert.pem` and `key.pem` (mode 0600) to `directory` (a new temporary one by default).

    `hosts` become subject alternative names: IP addresses as IP entries, anything else as DNS names.
    """
    hosts = tuple(hosts)
    if not hosts:
        raise TLSError("a certificate needs at least one host name or IP address")
    if days < 1:
        raise TLSError(f"days must be at least 1, got {days}")
    if key_type not in ("ec", "rsa"):
        raise TLSError(f"key_type must be 'ec' or 'rsa', got {key_type!r}")
    if backend not in ("auto", "cryptography", "openssl"):
        raise TLSError(f"backend must be 'auto', 'cryptography' or 'openssl', got {backend!r}")
    choices = available_backends()
    chosen = (choices[0] if choices else None) if backend == "auto" else backend
    if chosen is None or chosen not in choices:
        raise TLSError(
            f"cannot make a certificate with backend {backend!r}: install the `cryptography` package "
            "(pip install cryptography) or the openssl command line tool (apt-get install openssl)"
        )
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="labkit-tls-"))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if chosen == "cryptography":
        _with_cryptography(cert_path, key_path, hosts, days, key_type)
    else:
        _with_openssl(cert_path, key_path, hosts, days, key_type)
    os.chmod(key_path, 0o600)
    return SelfSignedCert(cert_path, key_path, hosts, chosen)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _with_cryptography(cert_path: Path, key_path: Path, hosts: tuple[str, ...], days: int, key_type: KeyType) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labkit-sim")])
    alt_names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _with_openssl(cert_path: Path, key_path: Path, hosts: tuple[str, ...], days: int, key_type: KeyType) -> None:
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    newkey = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if key_type == "ec" else ["-newkey", "rsa:2048"]
    )
    argv = [
        "openssl", "req", "-x509", *newkey, "-nodes", "-sha256", "-days", str(days),
        "-keyout", str(key_path), "-out", str(cert_path),
        "-subj", "/CN=labkit-sim", "-addext", f"subjectAltName={san}",
        "-addext", "basicConstraints=critical,CA:TRUE",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise TLSError(f"openssl could not make the certificate: {result.stderr.strip()[-500:]}")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
