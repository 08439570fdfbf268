"""The ``notifiers`` section of the configuration file: where alert notices go.

Strict models, one per kind, joined by ``kind``. Secrets are references (``${env:NAME}`` or
``${file:/path}``), resolved by the control-plane worker at delivery time, never stored resolved.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from cp.protocol import NAME_PATTERN

SECRET_REFERENCE = re.compile(r"\$\{(env|file):[^}]+\}")
ANY_REFERENCE = re.compile(r"\$\{[^}]*\}")
REFERENCE_HELP = "${env:NAME} or ${file:/path}"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_HEADERS = 20
MAX_HEADER_VALUE_CHARS = 1_024
MAX_URL_CHARS = 2_048
HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
# headers the delivery sets itself, and headers whose value is a credential
RESERVED_HEADERS = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length", "host"}
)
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """``10s``, ``1.5m``, ``500ms`` or a number of seconds, as seconds; anything else is left to
    the float check, which refuses it."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _reference_only(value: str, what: str) -> str:
    if not SECRET_REFERENCE.fullmatch(value):
        raise ValueError(f"{what} must be a secret reference ({REFERENCE_HELP}), not a literal")
    return value


class _Notifier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)


class WebhookNotifier(_Notifier):
    """POST each notice as JSON, signed per Standard Webhooks."""

    kind: Literal["webhook"]
    url: str = Field(max_length=MAX_URL_CHARS)
    secret: str = Field(max_length=1_024)
    headers: dict[str, str] = Field(default_factory=dict, max_length=MAX_HEADERS)
    timeout: Seconds = Field(default=10.0, gt=0, le=60)
    allow_insecure: bool = False

    @field_validator("secret")
    @classmethod
    def _secret_is_a_reference(cls, value: str) -> str:
        return _reference_only(value, "secret")

    @field_validator("headers")
    @classmethod
    def _bounded_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"invalid header name {name[:64]!r} (letters, digits, '-'; at most 64)")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by the delivery itself")
            if len(value) > MAX_HEADER_VALUE_CHARS or any(c in value for c in "\r\n\x00"):
                raise ValueError(f"header {name}: at most {MAX_HEADER_VALUE_CHARS} characters, one line")
            references = ANY_REFERENCE.findall(value)
            if any(not SECRET_REFERENCE.fullmatch(ref) for ref in references):
                raise ValueError(f"header {name}: invalid reference (use {REFERENCE_HELP})")
            if name.lower() in CREDENTIAL_HEADERS:
                _reference_only(value, f"header {name}")
        return headers

    @model_validator(mode="after")
    def _url_is_safe(self) -> WebhookNotifier:
        if ANY_REFERENCE.search(self.url):
            raise ValueError("url: a secret reference is not allowed here (put credentials in headers)")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: {self.url[:200]!r} is not an http(s) URL")
        if parts.password is not None:
            raise ValueError("url: a password in the URL is not allowed (put credentials in headers)")
        if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS and not self.allow_insecure:
            raise ValueError(
                "url: http is allowed only to 127.0.0.1 or localhost; use https, or set allow_insecure: true"
            )
        return self


class LogNotifier(_Notifier):
    """One structured log line per notice, on the control-plane worker's log."""

    kind: Literal["log"]
    level: Literal["info", "warning", "error"] = "warning"


class AppriseNotifier(_Notifier):
    """Chat and mail services through the Apprise library (the ``notify`` extra)."""

    kind: Literal["apprise"]
    url: str = Field(max_length=1_024)
    timeout: Seconds = Field(default=10.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url_is_a_reference(cls, value: str) -> str:
        return _reference_only(value, "url (an Apprise URL holds credentials)")


NotifierSpec = Annotated[WebhookNotifier | LogNotifier | AppriseNotifier, Field(discriminator="kind")]
NOTIFIER_KINDS = ("webhook", "log", "apprise")
_NOTIFIERS = TypeAdapter(list[NotifierSpec])


def load_notifiers(items: list[dict[str, Any]]) -> dict[str, WebhookNotifier | LogNotifier | AppriseNotifier]:
    """The notifiers of a stored (already validated) document, by name."""
    return {spec.name: spec for spec in _NOTIFIERS.validate_python(items)}


def without_kind_tag(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A validation error's location without the union's tag (``notifiers[0].webhook.url`` reads
    ``notifiers[0].url``)."""
    if len(loc) > 2 and loc[0] == "notifiers" and isinstance(loc[1], int) and loc[2] in NOTIFIER_KINDS:
        return (*loc[:2], *loc[3:])
    return loc
