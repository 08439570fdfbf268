"""Client TLS contexts that always verify, and one-line reasons for a failed handshake."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

# driver texts of TLS failures that trying again will not fix (libpq's, PyMySQL's, OpenSSL's)
_REFUSED = re.compile(
    r"certificate verify failed|does not match host name|server does not support SSL"
    r"|SSL is required but the server doesn't support it|certificate file|CERTIFICATE_VERIFY_FAILED",
    re.IGNORECASE,
)


CERTIFICATE_REFUSED = "the server's TLS certificate was refused"


class TlsConfigError(ValueError):
    """A CA, certificate or key file that cannot be used; the message names the file."""


def client_context(
    *,
    ca_file: Path | str | None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A context that requires the server's certificate to chain to ``ca_file`` (only to it), or to
    the system's trust store without one; the host name is checked unless ``check_hostname`` is
    off. ``cert_file``/``key_file``: a client certificate for servers that ask for one."""
    try:
        # with a cafile the context trusts that file alone, not the system's store as well
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"CA file {ca_file}: {_file_reason(exc)}") from None
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = check_hostname
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            where = f"{cert_file}" + (f" / key {key_file}" if key_file is not None else "")
            raise TlsConfigError(f"client certificate {where}: {_file_reason(exc)}") from None
    elif key_file is not None:
        raise TlsConfigError(f"client key {key_file} given without a client certificate")
    return context


def _file_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not usable ({getattr(exc, 'reason', None) or exc})".replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


def tls_failure(exc: BaseException) -> str | None:
    """Why a TLS handshake in ``exc`` (or anything it was raised from) failed, in one line; None
    when ``exc`` is not about TLS."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            detail = getattr(current, "verify_message", None) or getattr(current, "reason", None) or current
            return f"{CERTIFICATE_REFUSED}: {detail}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {getattr(current, 'reason', None) or current}"
        current = current.__cause__ or current.__context__
    text = " ".join(str(exc).split())
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"{CERTIFICATE_REFUSED}: {text}"
    return None


def tls_refused(exc: BaseException) -> bool:
    """Whether a connection failed for TLS reasons that a retry will not fix: the certificate was
    refused, the server does not do TLS, a certificate file is unusable."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or _REFUSED.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False
