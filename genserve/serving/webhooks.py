"""Job completion webhooks, signed as the Standard Webhooks specification says.

A job may name a callback URL; when it ends, genserve POSTs a JSON event there with the headers
`webhook-id`, `webhook-timestamp` and `webhook-signature` (HMAC-SHA256 with a shared secret), so
the receiver can check that genserve sent it, and when (https://www.standardwebhooks.com).

A callback makes genserve send a request on a caller's behalf, so the hosts it may reach are an
operator's allow-list, empty by default: a job must not make genserve probe its own cluster. The
list is checked when the job is submitted and again before each delivery (it may have changed),
with the same parser httpx sends with, so what was checked is what is reached. Redirects are never
followed: a receiver on the list cannot send genserve elsewhere.

Delivery is at least once: failures that may pass (no connection, a timeout, 408, 429, 5xx) are
retried with exponential backoff, every attempt with the same `webhook-id`, so a receiver drops
duplicates by it. Each attempt is signed afresh with the time it is sent, as receivers refuse
timestamps more than five minutes off.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from genserve.core.settings import positive_int, seconds

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
#: The specification's shortest secret: 24 random bytes.
MIN_SECRET_BYTES = 24
MAX_URL_CHARS = 2000
DEFAULT_PORTS = {"http": 80, "https": 443}
#: A callback to a receiver that answers these may succeed later; any other 4xx will not.
RETRIED_STATUSES = frozenset({408, 429})
NEW_SECRET = "python -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""


class CallbackRefused(ValueError):
    """A callback URL a job may not name; the message says why (the API answers 400 with it)."""


@dataclass(frozen=True)
class WebhookSettings:
    """Who may be called back, with what secret, and how persistently."""

    secret: bytes | None  # the HMAC key, decoded from "whsec_<base64>"; None: no callbacks at all
    allowed_hosts: tuple[str, ...]  # "host", "host:port", "*.example.com" (its subdomains); empty: none
    attempts: int = 5  # deliveries tried, the first included
    first_retry_s: float = 1.0  # the wait before the first retry, doubling for each one after it
    timeout_s: float = 10.0  # per attempt, from connecting to the response's status line

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebhookSettings:
        hosts = tuple(entry.strip() for entry in environ.get("GENSERVE_WEBHOOK_HOSTS", "").split(","))
        for entry in hosts:
            if entry:
                _host_pattern(entry, "GENSERVE_WEBHOOK_HOSTS")
        return cls(
            secret=_secret(environ.get("GENSERVE_WEBHOOK_SECRET", "")),
            allowed_hosts=tuple(entry for entry in hosts if entry),
            attempts=positive_int(environ, "GENSERVE_WEBHOOK_ATTEMPTS", cls.attempts),
            first_retry_s=seconds(environ, "GENSERVE_WEBHOOK_RETRY_S", cls.first_retry_s, minimum=0.0),
            timeout_s=seconds(environ, "GENSERVE_WEBHOOK_TIMEOUT_S", cls.timeout_s, minimum=0.1),
        )


def _secret(value: str) -> bytes | None:
    """The key of a Standard Webhooks secret, "whsec_" and base64 (padded or not); None when unset."""
    value = value.strip()  # a key file's newline
    if not value:
        return None
    name = "GENSERVE_WEBHOOK_SECRET"
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"{name} must be 'whsec_' and base64 (make one with: {NEW_SECRET})")
    encoded = value.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"{name} is not base64 after 'whsec_' (make one with: {NEW_SECRET})") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{name} is {len(key)} bytes: use at least {MIN_SECRET_BYTES} (make one with: {NEW_SECRET})"
        )
    return key


def _host_key(host: str) -> str:
    """A host as the allow-list compares it: lower case, IDNA, no root dot, an IP in its usual form."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _host_pattern(entry: str, source: str) -> tuple[str, int | None]:
    """An allow-list entry as (host, port or None for any); a wildcard keeps its "*." prefix."""
    wildcard = entry.startswith("*.")
    try:
        ipaddress.IPv6Address(entry)  # bare IPv6, no port: the URL parser wants brackets
        entry = f"[{entry}]"
    except ValueError:
        pass
    try:
        url = httpx.URL("//" + entry.removeprefix("*."))
    except httpx.InvalidURL as error:
        raise ValueError(f"{source}: {entry!r} is not a host[:port] ({error})") from None
    host = url.raw_host.decode("ascii")
    if not host or "*" in host or url.userinfo or url.path != "/" or url.query or url.fragment:
        raise ValueError(f"{source}: {entry!r} is not a host[:port] or *.domain[:port]")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"{source}: {entry!r} has no valid port")
    return ("*." if wildcard else "") + _host_key(host), url.port


def _allowed(host: str, port: int, allowed_hosts: tuple[str, ...]) -> bool:
    for entry in allowed_hosts:
        pattern, pattern_port = _host_pattern(entry, "allowed_hosts")
        if pattern_port is not None and pattern_port != port:
            continue
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def check_callback_url(url: str, settings: WebhookSettings) -> str:
    """Return the URL if a job may name it: http or https, a host in the allow-list, no
    user:password part, at most 2000 chars; else CallbackRefused. With no secret configured,
    every callback is refused too: a receiver could not tell genserve's events from forgeries."""
    if settings.secret is None:
        raise CallbackRefused("callbacks are off on this server: GENSERVE_WEBHOOK_SECRET is not set")
    if not settings.allowed_hosts:
        raise CallbackRefused("callbacks are off on this server: GENSERVE_WEBHOOK_HOSTS allows no host")
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefused(f"the URL is {len(url)} characters long, over {MAX_URL_CHARS}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise CallbackRefused(f"not a URL: {error}") from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise CallbackRefused(f"the scheme must be http or https, not {parsed.scheme or 'none'!r}")
    if parsed.userinfo:
        raise CallbackRefused("the URL must not hold a user name or password")
    host = _host_key(parsed.raw_host.decode("ascii"))
    if not host:
        raise CallbackRefused("the URL has no host")
    port = DEFAULT_PORTS[parsed.scheme] if parsed.port is None else parsed.port
    if not 0 < port < 65536:
        raise CallbackRefused(f"the port {port} is not valid")
    if not _allowed(host, port, settings.allowed_hosts):
        raise CallbackRefused(
            f"the host {host}:{port} is not in this server's allow-list (GENSERVE_WEBHOOK_HOSTS)"
        )
    return url


def signature_headers(secret: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers that sign `body` as message `message_id` sent at `timestamp`
    (Unix seconds): "v1," and the base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    signature = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
        "content-type": "application/json",
    }


async def _attempt(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> int | str:
    """One POST: the answer's status, or what went wrong before there was one. The answer's body is
    never read, so a receiver cannot make genserve hold a large one; `timeout_s` bounds it all."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            client.stream("POST", url, content=body, headers=headers) as answer,
        ):
            return answer.status_code
    except (httpx.TransportError, TimeoutError) as error:
        return f"{type(error).__name__} {error}".strip()


async def deliver(url: str, event: dict, message_id: str, settings: WebhookSettings) -> bool:
    """POST `event` as JSON, signed, until a 2xx (True) or a final failure (False): any other 4xx,
    a 3xx (redirects are not followed), a URL the settings no longer allow, or `settings.attempts`
    failures that may pass (no connection, a timeout, 408, 429, 5xx) with exponential backoff."""
    try:
        check_callback_url(url, settings)
    except CallbackRefused as refusal:
        logger.error("webhook %s not sent: %s", message_id, refusal)
        return False
    assert settings.secret is not None  # check_callback_url refuses every URL without one
    parsed = httpx.URL(url)
    target = f"{parsed.scheme}://{parsed.netloc.decode()}"  # no path: it may hold a receiver's token
    body = json.dumps(event, separators=(",", ":")).encode()
    # httpx's own timeouts (per read, write...) must not cut an attempt shorter than timeout_s.
    async with httpx.AsyncClient(follow_redirects=False, timeout=settings.timeout_s) as client:
        for attempt in range(1, settings.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(settings.first_retry_s * 2 ** (attempt - 2))
            headers = signature_headers(settings.secret, message_id, int(time.time()), body)
            outcome = await _attempt(client, url, body, headers, settings.timeout_s)
            if isinstance(outcome, int) and 200 <= outcome < 300:
                return True
            retry = isinstance(outcome, str) or outcome >= 500 or outcome in RETRIED_STATUSES
            logger.warning(
                "webhook %s to %s: attempt %d/%d failed (%s)%s",
                *(message_id, target, attempt, settings.attempts),
                f"HTTP {outcome}" if isinstance(outcome, int) else outcome,
                "" if retry and attempt < settings.attempts else ": giving up",
            )
            if not retry:
                return False
    return False
