"""Keep credentials out of logs, errors, overlays, file names and reports.

Redaction is by structure, not by a list of examples:

* the user information of a URL: everything between ``//`` (or ``:/``, as ``pathlib`` folds it)
  and the *last* ``@`` before the query, fragment or end of the URL, so a password with an
  unencoded reserved character (``rtsp://admin:pa/ss@host/``, ``pa@ss``, ``pa:ss``) is hidden
  whole; the user name before the first ``:`` is kept (``admin:***@host``);
* the value of every ``key=value`` pair whose key looks like a credential (:func:`is_secret_key`:
  ``password``, ``PassWord``, ``pwd``, ``login_pass``, ``api-key``, ``token``, ``sig``, ``user``,
  ``loginuse`` ...), wherever it is: a query (``?``, ``&``, ``;``), a path segment
  (``/user=admin_password=x_channel=1``, ``;password=x``) or free text.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

_EXACT_KEYS = frozenset(
    {
        "u", "p", "pw", "pwd", "usr", "user", "username", "login", "loginuse", "loginpas", "uid", "passwd",
        "sid", "sig", "key", "code", "pin", "otp", "jwt", "bearer",
    }
)  # fmt: skip
_KEY_PARTS = ("pass", "pwd", "token", "secret", "auth", "apikey", "sig", "session", "cred", "cookie", "private", "login")
_KEY_SUFFIXES = ("key", "user", "username", "usr", "id_token", "sid")


def is_secret_key(key: str) -> bool:
    """True for parameter names that carry credentials, in any case, with ``_``, ``-`` or ``.``."""
    norm = re.sub(r"[_.\-]", "", key.lower())
    if not norm:
        return False
    if norm in _EXACT_KEYS or any(part in norm for part in _KEY_PARTS):
        return True
    return any(norm.endswith(suffix) for suffix in _KEY_SUFFIXES)


# ``scheme://`` or ``scheme:/``; the user information runs to the last ``@`` before ``?``, ``#``,
# white space or a quote (so it may contain ``/``, ``:`` and ``@`` itself).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*:/{1,2})(?P<info>[^\s?#'\"<>]*)@")
# key=value: the key starts after a separator (or the start of the text); the value ends at a
# separator, white space, a quote, or ``_`` that starts the next ``key=`` (DVR-style paths).
_PAIR = re.compile(
    r"(?P<pre>(?:^|(?<=[?&;/_\s,(\[{'\"])))(?P<key>[A-Za-z][A-Za-z0-9_.\-]*)(?P<eq>\s*[=:]\s*|=)"
    r"(?P<value>[^&;#\s/?'\"<>]*?)(?=[&;#\s/?'\"<>]|_[A-Za-z][A-Za-z0-9_.\-]*=|$)"
)


def _userinfo(match: "re.Match[str]") -> str:
    info = match.group("info")
    if ":" in info:
        user = info.split(":", 1)[0]
        if "/" not in user:
            return f"{match.group('scheme')}{user}:{MASK}@"
    return f"{match.group('scheme')}{MASK}@"


def _pair(match: "re.Match[str]") -> str:
    key, eq, value = match.group("key"), match.group("eq"), match.group("value")
    if not value or not is_secret_key(key) or ("=" not in eq and not _looks_like_header(key)):
        return match.group(0)
    return f"{match.group('pre')}{key}{eq}{MASK}"


def _looks_like_header(key: str) -> bool:
    """``password: x`` in free text is redacted too, but ``user: ...`` is not (too common)."""
    norm = re.sub(r"[_.\-]", "", key.lower())
    return any(part in norm for part in ("pass", "pwd", "token", "secret", "apikey"))


def redact_text(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Redact every URL password, every credential-like ``key=value``, and each literal secret given."""
    # Credential pairs first (their values may hold an ``@``), then user information; a password
    # in the original user information is also hidden wherever else it appears.
    out = _USERINFO.sub(_userinfo, _PAIR.sub(_pair, text))
    literal = [*secrets, *(s for s in _userinfo_secrets(text) if len(s) >= 3)]
    for secret in sorted({s for s in literal if s}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def redact_url(text: str) -> str:
    """``rtsp://user:secret@host/x?password=p`` -> ``rtsp://user:***@host/x?password=***``."""
    return redact_text(text)


def url_password(text: str) -> str | None:
    """The password of a URL as a URL parser sees it (None if none)."""
    try:
        return urlsplit(text).password
    except ValueError:
        return None


def url_secrets(text: str) -> list[str]:
    """Every credential in ``text`` that :func:`redact_text` hides (the passwords, the credential values).

    For places that must hide them after the text was transformed (a file name made from a URL).
    """
    found = _userinfo_secrets(text)
    for match in _PAIR.finditer(text):
        if match.group("value") and is_secret_key(match.group("key")):
            found.append(match.group("value"))
    return [s for s in found if s]


def _userinfo_secrets(text: str) -> list[str]:
    found: list[str] = []
    for match in _USERINFO.finditer(text):
        info = match.group("info")
        user, sep, password = info.partition(":")
        found.append(password if sep and "/" not in user else info)
    return [s for s in found if s]
