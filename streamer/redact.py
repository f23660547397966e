"""Keep credentials out of logs, errors, overlays, file names and reports."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# Query parameters IP cameras and streaming servers use for credentials.
_SECRET_PARAMS = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|token|access_token|auth|authorization|key|api_key|apikey|secret|sig|signature)=)([^&;#\s]*)"
)

# ``scheme:/`` too: ``pathlib.Path("rtsp://u:p@h/x")`` folds the double slash into one, and an error
# that names such a path must not print the password.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*:/{1,2})(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")


def redact_url(text: str) -> str:
    """``rtsp://user:secret@host/x?password=p`` -> ``rtsp://user:***@host/x?password=***``."""
    return _SECRET_PARAMS.sub(r"\1***", _redact_userinfo(text))


def _redact_userinfo(text: str) -> str:
    try:
        parts = urlsplit(text)
    except ValueError:
        return _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
    if parts.password is None:
        return _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Redact every URL password in ``text`` and each literal secret given."""
    out = _SECRET_PARAMS.sub(r"\1***", _USERINFO.sub(r"\g<scheme>\g<user>:***@", text))
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out


def url_password(text: str) -> str | None:
    try:
        return urlsplit(text).password
    except ValueError:
        return None
