"""The REST connector's HTTP layer: one session with retries and Retry-After, auth from the environment,
a client-side rate limit, and masking of secrets in messages."""

from __future__ import annotations

import base64
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.util.retry import Retry

from ..base import reject_unknown_options, secret_from_env
from ..errors import ConfigurationError
from ..options import TEXT, Table, Tagged

__all__ = [
    "AUTH",
    "AUTH_OPTIONS",
    "BODY_ATTEMPTS",
    "RETRY_STATUSES",
    "HttpObserver",
    "Masker",
    "TokenBucket",
    "auth_options",
    "build_session",
    "check_headers",
    "credentials_from_env",
    "reason",
]

RETRY_STATUSES = (429, 500, 502, 503, 504)
# A 200 whose body is cut short or not JSON is usually transient (a dropped connection, a proxy's error
# page); it is fetched again this many times in all before the run fails.
BODY_ATTEMPTS = 3
# auth.type -> the keys it takes; every other key is named by its variable (`*_env`), never the secret.
AUTH_OPTIONS = {
    "bearer": Table({"type": TEXT, "token_env": TEXT}),
    "header": Table({"type": TEXT, "header": TEXT, "value_env": TEXT}),
    "basic": Table({"type": TEXT, "username_env": TEXT, "password_env": TEXT}),
}
AUTH = Tagged("type", lambda: AUTH_OPTIONS)
# Query parameters and header names whose values are masked in messages.
SECRET_NAME = re.compile(r"(?i)token|secret|passw|pwd|key|signature|sig|auth|credential|session")
_SECRET_QUERY = re.compile(
    r"(?i)([\w.\-\[\]%]*(?:token|secret|passw|pwd|key|signature|sig|auth|credential|session)[\w.\-\[\]%]*)=([^&#\s'\"]*)"
)


logger = logging.getLogger(__name__)


class HttpObserver:
    """What one source's session did, for its step record and the logs: the requests sent, the retries
    by cause (`status_429`, `status_5xx`, `connect`, `read`, `body`, `other`) and the waits the server
    asked for (a 429, or any answer with Retry-After). urllib3 retries inside one `session.request`, so
    without this nothing outside it would know. Thread-safe: one source, but counted from any thread."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.requests = 0
        self.retries: dict[str, int] = {}
        self.throttle_waits = 0
        self.throttle_wait_seconds = 0.0
        self._lock = threading.Lock()

    def request_sent(self) -> None:
        with self._lock:
            self.requests += 1

    def retried(
        self, *, cause: str, status: int | None, wait: float, attempt: int, throttled: bool, resent: bool
    ) -> None:
        """A retry decided: `attempt` (the next request's number) after `wait` seconds. `resent`: the
        retry's request is sent by urllib3 itself, not through `request_sent`."""
        with self._lock:
            self.retries[cause] = self.retries.get(cause, 0) + 1
            self.requests += resent
            if throttled:
                self.throttle_waits += 1
                self.throttle_wait_seconds += wait
        logger.info(
            "http_retry",
            extra={
                "dataset": self.source,
                "cause": cause,
                "status": status,
                "wait_seconds": round(wait, 3),
                "attempt": attempt,
                "throttle_wait": throttled,
            },
        )

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": dict(sorted(self.retries.items())),
                "throttle_waits": self.throttle_waits,
                "throttle_wait_seconds": round(self.throttle_wait_seconds, 3),
            }


class RetryAfter(Retry):
    """urllib3's Retry, also reading a fractional Retry-After ("0.5"; Shopify sends "2.0"), and telling its
    observer (carried from one Retry to the next, which urllib3 makes per retry) of every retry it waits."""

    def __init__(self, *args: Any, observer: HttpObserver | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observer = observer
        self._cause: tuple[str, int | None] = ("other", None)

    def new(self, **kw: Any) -> RetryAfter:
        retry = super().new(**kw)
        retry.observer = self.observer
        return retry

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> RetryAfter:
        retry = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when spent
        if error is not None:
            cause = (
                "connect"
                if self._is_connection_error(error)
                else "read"
                if self._is_read_error(error)
                else "other"
            )
        elif response is not None and response.status == 429:
            cause = "status_429"
        elif response is not None and response.status >= 500:
            cause = "status_5xx"
        else:
            cause = "other"
        retry._cause = (cause, response.status if response is not None else None)
        return retry

    def sleep(self, response: Any = None) -> None:
        # urllib3's own choice (Retry-After when the answer has one, else backoff), measured once, so the
        # wait reported is the wait slept (the backoff's jitter is random).
        retry_after = self.get_retry_after(response) if self.respect_retry_after_header and response else None
        wait = retry_after if retry_after else self.get_backoff_time()
        if self.observer is not None:
            cause, status = self._cause
            self.observer.retried(
                cause=cause,
                status=status,
                wait=wait,
                attempt=len(self.history) + 1,
                throttled=status == 429 or bool(retry_after),
                resent=True,
            )
        if wait > 0:
            time.sleep(wait)

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            seconds = float(retry_after)
        except ValueError:
            return super().parse_retry_after(retry_after)
        if not math.isfinite(seconds):
            return super().parse_retry_after(retry_after)
        return min(max(seconds, 0.0), float(getattr(self, "retry_after_max", seconds)))


class HeaderAuth(AuthBase):
    """Puts a secret in one header. Its repr never shows the value."""

    def __init__(self, header: str, value: str) -> None:
        self.header = header
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = self._value
        return request

    def __repr__(self) -> str:
        return f"HeaderAuth(header={self.header!r}, value='***')"


class TokenBucket:
    """Client-side rate limit: at most `rate` requests per second, bursts of `capacity`, monotonic clock."""

    def __init__(
        self,
        rate: float,
        *,
        capacity: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._updated = clock()

    def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            wait = (1 - self._tokens) / self.rate
            self._sleep(wait)
            self._tokens = 1.0
            self._updated = now + wait
        self._tokens -= 1


class Masker:
    """Makes text safe to show: the secrets read so far and secret-looking query values become ***."""

    def __init__(self) -> None:
        self.secrets: list[str] = []

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 4:  # masking a one-letter user name would garble the message, not protect it
                text = text.replace(secret, "***")
        return _SECRET_QUERY.sub(r"\1=***", text)

    def mask(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.password or parts.username:
            host = parts.hostname or ""
            netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
            url = urlunsplit(parts._replace(netloc=netloc))
        return self.scrub(url)


def check_headers(source: str, headers: Mapping[str, str]) -> None:
    """Static headers are logged and committed: a credential belongs in `auth`."""
    for header in headers:
        if header.lower() in ("authorization", "proxy-authorization") or SECRET_NAME.search(header):
            raise ConfigurationError(
                f"source {source!r}: header {header!r} looks like a credential; put it in 'auth' with "
                "the name of the environment variable that holds it"
            )


def auth_options(source: str, auth: dict[str, Any]) -> dict[str, Any]:
    if not auth:
        return {}
    kind = auth.get("type")
    if kind not in AUTH_OPTIONS:
        raise ConfigurationError(
            f"source {source!r}: auth.type {kind!r} is not one of {', '.join(AUTH_OPTIONS)}"
        )
    reject_unknown_options(source, auth, AUTH_OPTIONS[kind].keys, prefix="auth.")
    for key in sorted(set(AUTH_OPTIONS[kind].keys) - {"type"}):
        if not isinstance(auth.get(key), str) or not auth[key]:
            raise ConfigurationError(f"source {source!r}: auth type {kind!r} needs auth.{key}")
    return auth


def credentials_from_env(source: str, auth: Mapping[str, Any]) -> tuple[AuthBase | None, list[str]]:
    """The auth to send, and the secrets it carries (to mask in messages), read from the environment."""

    def env(option: str) -> str:
        return secret_from_env(auth[option], source=source, option=f"auth.{option}")

    kind = auth.get("type")
    if kind == "bearer":
        token = env("token_env")
        return HeaderAuth("Authorization", f"Bearer {token}"), [token]
    if kind == "header":
        value = env("value_env")
        return HeaderAuth(auth["header"], value), [value]
    if kind == "basic":
        username, password = env("username_env"), env("password_env")
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
        # A Stripe key is sent as the user name.
        return HTTPBasicAuth(username, password), [password, username, encoded]
    return None, []


def build_session(
    *,
    max_retries: int,
    backoff_factor: float,
    backoff_jitter: float,
    headers: Mapping[str, str],
    auth: AuthBase | None,
    observer: HttpObserver | None = None,
) -> requests.Session:
    """One session that retries connection errors, 429 (honouring Retry-After) and 5xx with backoff;
    `observer` hears of every retry."""
    retry = RetryAfter(
        observer=observer,
        total=max_retries,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_jitter=backoff_jitter,
        respect_retry_after_header=True,
        allowed_methods=None,  # GETs and read-only searches: retry them on read errors too
        raise_on_status=False,  # hand back the last answer, so its status and body can be reported
    )
    adapter = HTTPAdapter(max_retries=retry)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Accept": "application/json", "User-Agent": "django-spark-etl"})
    session.headers.update(headers)
    session.auth = auth
    return session


def reason(exc: BaseException) -> str:
    """The root cause of a requests error, without the pool's URL (which would carry the query)."""
    cause: BaseException = exc
    if exc.args and isinstance(exc.args[0], urllib3.exceptions.MaxRetryError):
        cause = exc.args[0].reason or exc.args[0]
    return f"{type(cause).__name__}: {cause}"
