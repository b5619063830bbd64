"""Webhooks: signed deliveries to a real loopback receiver, verified with the Standard Webhooks package,
retries, redirects and refusals; the callback allow-list; the settings."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Iterator

import pytest
from helpers import Receiver, webhook_receiver
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from genserve.serving.processes import free_port
from genserve.serving.webhooks import (
    CallbackRefused,
    WebhookSettings,
    check_callback_url,
    deliver,
    signature_headers,
)

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
EVENT = {"type": "job.completed", "data": {"id": "job_1", "state": "completed", "seed": 42}}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as state:
        yield state


def settings(hosts: tuple[str, ...] = ("127.0.0.1",), **overrides) -> WebhookSettings:
    """Loopback allowed, tiny retry delays so the tests stay fast."""
    values = {"secret": KEY, "allowed_hosts": hosts, "attempts": 3, "first_retry_s": 0.01, "timeout_s": 2.0}
    return WebhookSettings(**{**values, **overrides})


def send(url: str, hooks: WebhookSettings, message_id: str = "msg_1") -> bool:
    return asyncio.run(deliver(url, EVENT, message_id, hooks))


def test_a_delivery_verifies_with_the_standard_webhooks_package(receiver: Receiver) -> None:
    assert send(receiver.url(), settings(), "msg_abc") is True
    [request] = receiver.received
    assert Webhook(SECRET).verify(request.body, request.headers) == EVENT
    assert request.headers["webhook-id"] == "msg_abc"
    assert request.headers["content-type"] == "application/json"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60


def test_a_tampered_body_does_not_verify(receiver: Receiver) -> None:
    send(receiver.url(), settings())
    [request] = receiver.received
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(request.body.replace(b"42", b"43"), request.headers)


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_failures_that_may_pass_are_retried_with_the_same_id_until_delivered(
    receiver: Receiver, status: int
) -> None:
    receiver.script["/hook"] = [(status, {}, 0.0), (status, {}, 0.0)]
    assert send(receiver.url(), settings(), "msg_retry") is True
    assert len(receiver.received) == 3
    assert {request.headers["webhook-id"] for request in receiver.received} == {"msg_retry"}
    for request in receiver.received:  # each attempt is signed, with its own timestamp
        assert Webhook(SECRET).verify(request.body, request.headers) == EVENT


def test_a_timeout_is_retried(receiver: Receiver) -> None:
    receiver.script["/hook"] = [(200, {}, 1.0)]  # answers after the attempt has given up
    assert send(receiver.url(), settings(timeout_s=0.2)) is True
    assert receiver.paths() == ["/hook", "/hook"]


def test_a_redirect_is_not_followed_and_fails(receiver: Receiver) -> None:
    receiver.script["/hook"] = [(302, {"location": receiver.url("/elsewhere")}, 0.0)]
    assert send(receiver.url(), settings()) is False
    assert receiver.paths() == ["/hook"]  # neither followed nor retried


def test_a_client_error_is_final(receiver: Receiver) -> None:
    receiver.script["/hook"] = [(400, {}, 0.0)]
    assert send(receiver.url(), settings()) is False
    assert receiver.paths() == ["/hook"]


def test_a_dead_port_is_tried_attempts_times_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?token=receivers-own"
    with caplog.at_level(logging.WARNING, logger="genserve.serving.webhooks"):
        assert send(url, settings(attempts=4), "msg_dead") is False
    failures = [record.getMessage() for record in caplog.records]
    assert len(failures) == 4, failures
    assert all("msg_dead" in message for message in failures)
    assert "giving up" in failures[-1]
    log = "\n".join(failures)
    assert SECRET.removeprefix("whsec_") not in log
    assert "receivers-own" not in log  # the URL's path and query may hold a receiver's secret


def test_a_host_no_longer_allowed_gets_nothing(receiver: Receiver) -> None:
    assert send(receiver.url(), settings(hosts=("hooks.example.com",))) is False
    assert receiver.received == []


def test_the_signature_is_the_specifications_published_example() -> None:
    key = WebhookSettings.from_env(
        {"GENSERVE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    ).secret
    assert key is not None
    headers = signature_headers(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "content-type": "application/json",
    }


@pytest.mark.parametrize(
    ("url", "hooks", "reason"),
    [
        ("https://hooks.example.com/x", settings(hosts=()), "GENSERVE_WEBHOOK_HOSTS allows no host"),
        ("https://hooks.example.com/x", settings(secret=None), "GENSERVE_WEBHOOK_SECRET is not set"),
        ("https://evil.example.org/x", settings(), "not in this server's allow-list"),
        ("https://hooks.example.com.evil.org/", settings(hosts=("hooks.example.com",)), "allow-list"),
        ("https://example.com/", settings(hosts=("*.example.com",)), "allow-list"),  # subdomains only
        ("https://notexample.com/", settings(hosts=("*.example.com",)), "allow-list"),
        ("http://127.0.0.1:9000/", settings(hosts=("127.0.0.1:8000",)), "allow-list"),
        ("http://127.0.0.1/", settings(hosts=("127.0.0.1:443",)), "allow-list"),  # http is port 80
        ("ftp://127.0.0.1/x", settings(), "scheme must be http or https, not 'ftp'"),
        ("127.0.0.1/x", settings(), "scheme must be http or https"),
        ("http://user:pass@127.0.0.1/x", settings(), "user name or password"),
        ("http://user@127.0.0.1/x", settings(), "user name or password"),
        ("http:///x", settings(), "no host"),
        ("http://127.0.0.1:99999/", settings(), "port 99999"),
        ("http://127.0.0.1/" + "a" * 2000, settings(), "over 2000"),
        ("http://127.0.0.1/\n", settings(), "not a URL"),
    ],
)
def test_callbacks_refused(url: str, hooks: WebhookSettings, reason: str) -> None:
    with pytest.raises(CallbackRefused, match=reason):
        check_callback_url(url, hooks)


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("https://hooks.example.com/done?job=1", ("other.org", "hooks.example.com")),
        ("https://HOOKS.Example.com./done", ("hooks.example.com",)),
        ("https://a.hooks.example.com/done", ("*.example.com",)),
        ("https://hooks.example.com:8443/done", ("*.example.com:8443",)),
        ("http://127.0.0.1:8000/done", ("127.0.0.1:8000",)),
        ("https://127.0.0.1/done", ("127.0.0.1:443",)),
        ("http://[::1]:8000/done", ("::1",)),
        ("http://[0:0::1]:8000/done", ("[::1]:8000",)),
    ],
)
def test_callbacks_allowed(url: str, hosts: tuple[str, ...]) -> None:
    assert check_callback_url(url, settings(hosts=hosts)) == url


def test_settings_from_the_environment() -> None:
    hooks = WebhookSettings.from_env(
        {
            "GENSERVE_WEBHOOK_SECRET": SECRET.rstrip("=") + "\n",  # unpadded, with a key file's newline
            "GENSERVE_WEBHOOK_HOSTS": "hooks.example.com, *.example.org:8443,,[::1]:9000",
            "GENSERVE_WEBHOOK_ATTEMPTS": "7",
            "GENSERVE_WEBHOOK_RETRY_S": "0.5",
            "GENSERVE_WEBHOOK_TIMEOUT_S": "3",
        }
    )
    assert hooks == WebhookSettings(
        secret=KEY,
        allowed_hosts=("hooks.example.com", "*.example.org:8443", "[::1]:9000"),
        attempts=7,
        first_retry_s=0.5,
        timeout_s=3.0,
    )


def test_settings_default_to_no_callbacks() -> None:
    assert WebhookSettings.from_env({}) == WebhookSettings(secret=None, allowed_hosts=())


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GENSERVE_WEBHOOK_SECRET", base64.b64encode(KEY).decode(), "must be 'whsec_'"),
        ("GENSERVE_WEBHOOK_SECRET", "whsec_not base64!", "not base64"),
        ("GENSERVE_WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"short").decode(), "at least 24"),
        ("GENSERVE_WEBHOOK_HOSTS", "hooks.example.com/path", "not a host"),
        ("GENSERVE_WEBHOOK_HOSTS", "user@hooks.example.com", "not a host"),
        ("GENSERVE_WEBHOOK_HOSTS", "hooks.example.com:http", "not a host"),
        ("GENSERVE_WEBHOOK_HOSTS", "hooks.example.com:0", "no valid port"),
        ("GENSERVE_WEBHOOK_HOSTS", "*.*.example.com", "not a host"),
        ("GENSERVE_WEBHOOK_ATTEMPTS", "0", "at least 1"),
        ("GENSERVE_WEBHOOK_RETRY_S", "soon", "not a number"),
        ("GENSERVE_WEBHOOK_RETRY_S", "nan", "at least 0"),
        ("GENSERVE_WEBHOOK_TIMEOUT_S", "0", "at least 0.1"),
    ],
)
def test_malformed_settings_name_their_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        WebhookSettings.from_env({name: value})
    assert name in str(error.value)
