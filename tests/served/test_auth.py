"""API keys against a real server: Bearer keys from the environment and a file, rotation, open probes."""

from __future__ import annotations

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException
from decoding import read_image
from helpers import ENV_KEYS, FILE_KEY

from genserve.serving.auth import KeyRing


def generate(url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/txt2img", json={"prompt": "a cat", "seed": 1}, headers=headers, timeout=60)


@pytest.mark.parametrize("key", [*ENV_KEYS, FILE_KEY])
def test_every_configured_key_is_accepted(keyed, key) -> None:
    response = generate(keyed[0], key)
    assert response.status_code == 200
    assert read_image(response.content)[0] == "image/png"


@pytest.mark.parametrize("key", [None, "wrong-key", ENV_KEYS[0] + "x", ENV_KEYS[0][:-1]])
def test_missing_or_wrong_key_is_401(keyed, key) -> None:
    response = generate(keyed[0], key)
    assert response.status_code == 401
    assert "API key" in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_every_generation_endpoint_is_protected(keyed) -> None:
    url = keyed[0]
    assert httpx.post(f"{url}/txt2vid/submit", json={"prompt": "a cat"}).status_code == 401
    assert httpx.get(f"{url}/txt2vid/status", params={"task_id": "x"}).status_code == 401
    files = {"image": ("a.png", b"whatever", "image/png")}
    assert httpx.post(f"{url}/img2vid", files=files).status_code == 401


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/models"])
def test_probes_metrics_and_limits_stay_open(keyed, path) -> None:
    assert httpx.get(f"{keyed[0]}{path}").status_code == 200


def test_key_file_rotation_needs_no_restart(keyed) -> None:
    url, key_file, _ = keyed
    key_file.write_text("rotated-key-four\n")
    try:
        assert generate(url, "rotated-key-four").status_code == 200
        assert generate(url, FILE_KEY).status_code == 401
        assert generate(url, ENV_KEYS[0]).status_code == 200  # environment keys are unaffected
    finally:
        key_file.write_text(f"{FILE_KEY}\n")


def test_bentoml_client_token_works(keyed) -> None:
    url = keyed[0]
    with bentoml.SyncHTTPClient(url, token=ENV_KEYS[1], timeout=60) as client:
        assert read_image(client.txt2img(prompt="a cat").read_bytes())[0] == "image/png"
    with bentoml.SyncHTTPClient(url, token="nope", timeout=60) as client, pytest.raises(BentoMLException):
        client.txt2img(prompt="a cat")


def test_keys_never_reach_the_logs(keyed) -> None:
    url, _, directory = keyed
    generate(url, ENV_KEYS[0])
    generate(url, "a-wrong-key-to-log")
    logs = "".join(path.read_text(errors="replace") for path in directory.glob("serve-*.log"))
    assert "/txt2img" in logs  # the access log is there...
    for secret in (*ENV_KEYS, FILE_KEY, "a-wrong-key-to-log"):
        assert secret not in logs  # ...without any key in it


def test_key_ring_without_keys_is_open_and_a_missing_file_locks(tmp_path) -> None:
    assert not KeyRing().enabled
    locked = KeyRing(key_file=tmp_path / "absent")
    assert locked.enabled and not locked.accepts("")
