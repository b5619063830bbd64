"""The jobs API in process (Starlette's test client over a real SQLite store): what needs no model."""

from __future__ import annotations

from helpers import TINY
from starlette.testclient import TestClient

from genserve.core.schemas import image_request_model
from genserve.core.settings import Settings
from genserve.serving.job_api import JobsAPI
from genserve.serving.job_store import SQLiteJobStore, StoreLimits
from genserve.serving.webhooks import WebhookSettings


def client(tmp_path, max_jobs: int = 10, **environ: str) -> TestClient:
    settings = Settings.from_env({**TINY, **environ})
    store = SQLiteJobStore(tmp_path / "jobs.db", StoreLimits(max_jobs, 60, 2**20))
    models = {"txt2img": image_request_model(settings.image.preset)}
    return TestClient(JobsAPI(store, models, settings, WebhookSettings.from_env({})).app())


def test_a_full_store_refuses_new_jobs_with_503_and_keeps_the_accepted_ones(tmp_path) -> None:
    api = client(tmp_path, max_jobs=2)
    accepted = [api.post("/jobs/txt2img", json={"prompt": f"cat {i}"}) for i in range(2)]
    assert [response.status_code for response in accepted] == [202, 202]
    refused = api.post("/jobs/txt2img", json={"prompt": "one too many"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "limit" in refused.json()["error"]
    assert all(api.get(f"/jobs/{r.json()['id']}").json()["state"] == "queued" for r in accepted)


def test_the_seed_is_fixed_at_submission_and_queued_jobs_know_their_place(tmp_path) -> None:
    api = client(tmp_path)
    first, second = (api.post("/jobs/txt2img", json={"prompt": "a cat"}).json() for _ in range(2))
    assert isinstance(first["seed"], int) and first["fields"]["seed"] == first["seed"]
    assert (first["position"], second["position"]) == (0, 1)
    assert first["progress"] == {
        "fraction": 0.0,
        "stages": {"image": {"step": 0, "total": None, "fraction": 0.0}},
        "eta_s": None,
    }


def test_with_keys_each_key_is_a_tenant_and_the_store_never_holds_a_key(tmp_path) -> None:
    api = client(tmp_path, GENSERVE_API_KEYS="key-a,key-b")
    made = api.post(
        "/jobs/txt2img", json={"prompt": "a cat"}, headers={"Authorization": "Bearer key-a"}
    ).json()
    assert api.get(f"/jobs/{made['id']}", headers={"Authorization": "Bearer key-b"}).status_code == 404
    assert api.get(f"/jobs/{made['id']}", headers={"Authorization": "Bearer key-a"}).status_code == 200
    assert not any(b"key-a" in path.read_bytes() for path in tmp_path.glob("jobs.db*"))  # WAL too
