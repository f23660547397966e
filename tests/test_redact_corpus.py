"""Credentials are redacted by structure: a seeded generator of many URL shapes (no list of examples).

Each generated URL hides a random secret in one of the places cameras, DVRs and streaming
servers put credentials: the user information (with unencoded reserved characters), a query
parameter in any of the spellings (any case, ``_``/``-``/``.``), a DVR-style path segment
(``/user=admin_password=SECRET_channel=1``) or a ``;key=value`` parameter.  The secret must
never appear in what streamer shows: :func:`redact_text` (error lines and logs go through it),
the source's display name (overlay, report, frame names, file names), a real error line from
``open_source``, and the command line's stderr.
"""

from __future__ import annotations

import logging
import random
import string

import pytest

from streamer.redact import MASK, is_secret_key, redact_text, redact_url, url_secrets

SEED = 1313
SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "RTSP", "Http", "srt", "udp")
HOSTS = ("cam.local", "10.0.0.7", "[fe80::1]", "dvr", "nvr-2.example.org")
PORTS = ("", ":554", ":8080", ":1")
PATHS = ("", "/", "/live", "/Streaming/Channels/101", "/cgi-bin/snapshot.cgi", "/h264/ch1/main/av_stream", "/videostream.cgi")
USER_KEYS = ("user", "username", "usr", "User", "USERNAME", "loginuse", "login", "u", "uid")
SECRET_KEYS = (
    "password", "PassWord", "PASSWORD", "passwd", "pass", "pwd", "Pwd", "pw", "p", "loginpas", "login_pass",
    "token", "access_token", "Access-Token", "auth", "auth_token", "key", "apikey", "api_key", "API-Key",
    "secret", "client_secret", "sig", "signature", "Signature", "session", "sessionid", "session_id", "sid", "SID",
    "X-Amz-Signature", "authkey", "user_pwd", "passcode", "credential",
)  # fmt: skip
USERINFO_CHARS = string.ascii_letters + string.digits + "-._~!$&()*+,;=:/@%"
"""What a user types as a camera password: unreserved, sub-delims and the reserved ``: / @`` unencoded
(not ``? #``, white space or quotes: those end a URL's authority for every parser, ours too)."""
VALUE_CHARS = string.ascii_letters + string.digits + "-.~!$*+,:@%"


def _secret(rng: random.Random, chars: str) -> str:
    core = "".join(rng.choice(chars) for _ in range(rng.randint(6, 16)))
    return "S3" + core + "x9"  # never a substring of the URL around it


def _url(rng: random.Random) -> tuple[str, str]:
    scheme, host, port, path = rng.choice(SCHEMES), rng.choice(HOSTS), rng.choice(PORTS), rng.choice(PATHS)
    shape = rng.randrange(5)
    extra = rng.choice(("", "?channel=1", "?subtype=0&channel=2", "#frag"))
    if shape == 0:  # user information with reserved characters in the password
        secret = _secret(rng, USERINFO_CHARS)
        return f"{scheme}://{rng.choice(('admin', 'root', ''))}:{secret}@{host}{port}{path}{extra}", secret
    if shape == 1:  # a token as the whole user information
        secret = _secret(rng, string.ascii_letters + string.digits + "-._~")
        return f"{scheme}://{secret}@{host}{port}{path}{extra}", secret
    key = rng.choice(SECRET_KEYS)
    secret = _secret(rng, VALUE_CHARS)
    if shape == 2:  # a query parameter among others
        params = [f"{rng.choice(USER_KEYS)}=admin", f"{key}={secret}", "channel=1", "stream=0"]
        rng.shuffle(params)
        return f"{scheme}://{host}{port}{path}?{rng.choice('&;').join(params)}", secret
    if shape == 3:  # DVR style: credentials inside the path, joined with _
        return f"{scheme}://{host}{port}/cam/realmonitor/{rng.choice(USER_KEYS)}=admin_{key}={secret}_channel=1_stream=0.sdp", secret
    return f"{scheme}://{host}{port}{path or '/live'};{key}={secret};transport=tcp", secret


def _leaks(secret: str, text: str) -> bool:
    """Any 5 characters of the secret in a row shown (not only the whole secret)."""
    return any(secret[i : i + 5] in text for i in range(len(secret) - 4))


CORPUS = [_url(random.Random(SEED + i)) for i in range(3000)]


def test_the_corpus_covers_every_shape() -> None:
    assert len({url for url, _ in CORPUS}) > 2900
    assert sum("@" in u and "/" in s for u, s in CORPUS) > 50, "passwords with an unencoded /"
    assert sum("_channel=1" in u for u, _ in CORPUS) > 300


@pytest.mark.parametrize("chunk", range(10))
def test_no_secret_survives_redaction(chunk: int) -> None:
    for url, secret in CORPUS[chunk::10]:
        for text in (url, f"streamer: error: {url}: cannot open (timeout)", f"'{url}'", f"({url})", f"source {url} -> out.mp4"):
            out = redact_text(text)
            assert not _leaks(secret, out), f"{secret!r} shown in {out!r}"
            assert MASK in out
        assert not _leaks(secret, redact_url(url))
        assert any(secret in s for s in url_secrets(url)), (url, url_secrets(url))


def test_the_rest_of_the_url_stays_readable() -> None:
    assert redact_text("rtsp://admin:pa/ss@cam.local:554/live") == "rtsp://admin:***@cam.local:554/live"
    assert redact_text("http://h/cgi?loginuse=admin&loginpas=s3&res=1") == "http://h/cgi?loginuse=***&loginpas=***&res=1"
    assert redact_text("rtsp://h/cam/realmonitor/user=admin_password=x-y_channel=1.sdp") == "rtsp://h/cam/realmonitor/user=***_password=***_channel=1.sdp"
    assert redact_text("rtsp://cam.local:554/Streaming/Channels/101?channel=1") == "rtsp://cam.local:554/Streaming/Channels/101?channel=1"
    assert redact_text("video.mp4: frame 3 of 250, size=4") == "video.mp4: frame 3 of 250, size=4"


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_credential_keys_in_every_spelling(key: str) -> None:
    assert is_secret_key(key)
    assert is_secret_key(key.upper()) and is_secret_key(key.replace("_", "-"))


@pytest.mark.parametrize("key", ["channel", "subtype", "stream", "transport", "resolution", "fps", "width", "codec"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)


def test_log_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    from streamer.cli import _OneLineFormatter

    formatter = _OneLineFormatter()
    for url, secret in CORPUS[::50]:
        record = logging.LogRecord("streamer", logging.WARNING, __file__, 1, "%s: lost, reconnecting", (url,), None)
        assert not _leaks(secret, formatter.format(record))


def test_sources_show_only_the_redacted_url() -> None:
    """A real open of each shape against a closed port: the error line and the display name."""
    from engines.errors import SourceError
    from helpers import closed_port
    from streamer.sources import SourceOptions, open_source

    port = closed_port()
    rng = random.Random(SEED)
    picked = [CORPUS[i] for i in rng.sample(range(len(CORPUS)), 60)]
    for url, secret in picked:
        if not url.lower().startswith(("rtsp://", "http://", "https://", "rtsps://", "rtmp://")):
            continue
        local = url.replace("://", "://", 1)
        for host in HOSTS:
            local = local.replace(host, "127.0.0.1")
        for p in PORTS[1:]:
            local = local.replace(f"127.0.0.1{p}", "127.0.0.1")
        local = local.replace("127.0.0.1", f"127.0.0.1:{port}", 1)
        with pytest.raises(SourceError) as info:
            open_source(local, SourceOptions(open_timeout_s=0.5, read_timeout_s=0.5))
        assert not _leaks(secret, str(info.value)), str(info.value)
