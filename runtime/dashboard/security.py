"""Who may change what: the dashboard token, CSRF protection, Host checks, security headers.

* **Token.** Mutating actions need the dashboard token (``--token``). An operator enters it
  once (``POST /login``); the browser then keeps a derived value (an HMAC of the token, never
  the token itself) in an ``HttpOnly``, ``SameSite=Strict`` cookie. Without a configured token
  the dashboard is read-only: every mutating request is refused.
* **CSRF.** Every page sets a random session id cookie (``HttpOnly``, ``SameSite=Strict``) and
  puts ``HMAC(secret, session id)`` into a hidden field of each form. A mutating request must
  carry both and they must agree (a *signed* double submit: a page of another site cannot
  read the field, and a cookie planted by another local port cannot be paired with a valid
  field without the secret, which is derived from the token). Requests whose ``Origin`` is
  another host, or whose ``Sec-Fetch-Site`` is not ``same-origin``, are refused as well.
* **Host.** Bound to a loopback address (the default), only ``Host: 127.0.0.1``,
  ``localhost`` or ``[::1]`` is served, which defeats DNS rebinding.
* Every comparison of secrets uses :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "reactgen_dashboard_session"
AUTH_COOKIE = "reactgen_dashboard_auth"
FLASH_COOKIE = "reactgen_dashboard_flash"
CSRF_FIELD = "csrf"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_AUTH_CONTEXT = b"reactgen-dashboard-auth-v1"
_SECRET_CONTEXT = b"reactgen-dashboard-signing-v1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a ``Host`` header value (without the port; IPv6 unbracketed)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


@dataclass
class Guard:
    """The security decisions of one dashboard server.

    Its ``secret`` signs CSRF fields and flash messages. With a token it is derived from the
    token, so pages stay valid across restarts and on every instance that shares the token;
    without one (a read-only dashboard, where no action is accepted anyway) it is random.
    """

    token: str | None
    """The dashboard token; None or empty: read-only."""
    local_only: bool = True
    """Serve only requests addressed to a loopback name (``Host`` header)."""
    secret: bytes = b""

    def __post_init__(self) -> None:
        if not self.secret:
            self.secret = hmac.new(self.token.encode(), _SECRET_CONTEXT, hashlib.sha256) \
                .digest() if self.token else secrets.token_bytes(32)

    @property
    def actions_enabled(self) -> bool:
        """Whether a token is configured (otherwise nothing can be changed)."""
        return bool(self.token)

    # -- host

    def host_allowed(self, request: Request) -> bool:
        """Whether the ``Host`` header names this server (always true unless local-only)."""
        if not self.local_only:
            return True
        return host_name(request.headers.get("host", "")) in LOOPBACK_NAMES

    # -- session and CSRF

    @staticmethod
    def session_id(request: Request) -> str | None:
        """The session id cookie, if the browser sent a well-formed one."""
        value = request.cookies.get(SESSION_COOKIE)
        if value and 20 <= len(value) <= 100 and value.isascii():
            return value
        return None

    @staticmethod
    def new_session_id() -> str:
        """A fresh random session id."""
        return secrets.token_urlsafe(32)

    def csrf_token(self, session: str) -> str:
        """The form field value that goes with a session id."""
        return hmac.new(self.secret, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, request: Request, form: Mapping[str, str]) -> bool:
        """Whether the form's CSRF field matches the session cookie."""
        session = self.session_id(request)
        submitted = form.get(CSRF_FIELD, "")
        if session is None or not submitted:
            return False
        return hmac.compare_digest(submitted.encode(), self.csrf_token(session).encode())

    @staticmethod
    def same_origin(request: Request) -> bool:
        """False if the browser says the request comes from another site (``Origin`` of
        another host, or ``Sec-Fetch-Site`` other than ``same-origin``)."""
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site != "same-origin":
            return False
        origin = request.headers.get("origin")
        if origin is None:
            return True
        if origin == "null":
            return False
        host = request.headers.get("host", "")
        return bool(host) and urlsplit(origin).netloc.lower() == host.strip().lower()

    # -- the token

    def auth_cookie_value(self) -> str:
        """What the auth cookie holds once the token was entered (derived from the token)."""
        assert self.token
        return hmac.new(self.token.encode(), _AUTH_CONTEXT, hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is the dashboard token."""
        if not self.token or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def authenticated(self, request: Request) -> bool:
        """Whether the browser holds the auth cookie of the current token."""
        if not self.token:
            return False
        value = request.cookies.get(AUTH_COOKIE, "")
        return bool(value) and hmac.compare_digest(value.encode(),
                                                   self.auth_cookie_value().encode())

    # -- flash messages

    def sign(self, text: str) -> str:
        """``text`` with a signature, for a cookie this server will trust."""
        digest = hmac.new(self.secret, b"flash:" + text.encode(), hashlib.sha256).hexdigest()
        return f"{digest}.{text}"

    def unsign(self, value: str) -> str | None:
        """The text of a value made by :meth:`sign`, or None if it was not."""
        digest, _, text = value.partition(".")
        expected = hmac.new(self.secret, b"flash:" + text.encode(), hashlib.sha256).hexdigest()
        return text if hmac.compare_digest(digest.encode(), expected.encode()) else None


def content_security_policy(nonce: str) -> str:
    """The CSP of every page: nothing but our own nonce'd style and script, forms to us only,
    no framing."""
    return (f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
