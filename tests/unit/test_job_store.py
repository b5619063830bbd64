"""The job stores, each against the real thing: an SQLite file, and a `redis-server` started here."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from helpers import new_job, redis_server

from genserve.serving.job_store import RedisJobStore, SQLiteJobStore, StoreFull, StoreLimits

LIMITS = StoreLimits(max_jobs=5, retention_s=60, max_result_bytes=1000)
LEASE_S = 0.5


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return SQLiteJobStore(tmp_path / "jobs.db", LIMITS)
    return RedisJobStore(redis_url, LIMITS, prefix=f"test-{uuid.uuid4().hex}:")  # a store of its own


def test_jobs_are_claimed_oldest_first_and_know_their_place(store) -> None:
    first, second, third = (new_job(created=time.time() + i) for i in range(3))
    for job in (second, first, third):
        store.create(job, {})
    assert [store.position(job) for job in (first, second, third)] == [0, 1, 2]
    claimed = store.claim("runner-a", LEASE_S)
    assert (claimed.id, claimed.state, claimed.attempts) == (first.id, "running", 1)
    assert store.position(store.get(third.id)) == 1
    assert store.claim("runner-b", LEASE_S).id == second.id


def test_a_lapsed_lease_is_taken_over_and_its_old_runner_can_no_longer_finish(store) -> None:
    job = new_job()
    store.create(job, {"image": b"picture"})
    assert store.claim("runner-a", LEASE_S).id == job.id
    assert store.claim("runner-b", LEASE_S) is None  # held
    assert store.renew(job.id, "runner-a", LEASE_S)
    time.sleep(LEASE_S + 0.1)
    taken = store.claim("runner-b", LEASE_S)
    assert (taken.id, taken.attempts, taken.lease_owner) == (job.id, 2, "runner-b")
    assert not store.renew(job.id, "runner-a", LEASE_S)
    assert store.finish(job.id, "runner-a", "completed", b"old", "image/png") is None
    done = store.finish(job.id, "runner-b", "completed", b"new", "image/png")
    assert (done.state, done.result_type) == ("completed", "image/png")
    assert store.blob(job.id, "result") == b"new" and store.blob(job.id, "image") == b"picture"
    assert store.claim("runner-c", LEASE_S) is None


def test_cancel_stops_queued_and_running_jobs_and_leaves_finished_ones(store) -> None:
    queued, running, finished = new_job(), new_job(created=time.time() + 1), new_job(created=time.time() + 2)
    for job in (queued, running, finished):
        store.create(job, {})
    store.cancel(queued.id)
    assert store.claim("runner", LEASE_S).id == running.id  # the cancelled one is never run
    assert store.claim("runner", LEASE_S).id == finished.id
    store.finish(finished.id, "runner", "failed", status=500, error="boom")
    assert store.cancel(running.id).state == "cancelled" and store.is_cancelled(running.id)
    assert store.finish(running.id, "runner", "completed", b"late", "image/png") is None
    assert store.cancel(finished.id).state == "failed"
    assert store.cancel("no-such-job") is None


def test_a_webhook_is_delivered_under_a_lease_and_retried_by_another_runner(store) -> None:
    job = new_job(callback="https://hooks.example/done")
    store.create(job, {})
    store.claim("runner-a", LEASE_S)
    assert store.finish(job.id, "runner-a", "completed", b"png", "image/png").webhook == "pending"
    assert store.renew(job.id, "runner-a", LEASE_S)  # delivering
    time.sleep(LEASE_S + 0.1)  # runner-a died before it delivered
    again = store.claim("runner-b", LEASE_S)
    assert (again.id, again.state, again.attempts) == (job.id, "completed", 1)  # not run again
    store.webhook_done(job.id, "runner-b", delivered=True)
    assert store.get(job.id).webhook == "delivered"
    assert store.claim("runner-c", LEASE_S) is None


def test_listing_is_per_owner_newest_first_with_a_cursor_and_a_state(store) -> None:
    now = time.time()
    mine = [new_job(created=now + i) for i in range(3)]
    for job in [*mine, new_job(owner="bob", created=now + 5)]:
        store.create(job, {})
    store.claim("runner", LEASE_S)
    assert [job.id for job in store.list("alice", None, 2, None)] == [mine[2].id, mine[1].id]
    assert [job.id for job in store.list("alice", None, 2, mine[1].created_at)] == [mine[0].id]
    assert [job.id for job in store.list("alice", "running", 10, None)] == [mine[0].id]
    assert [job.owner for job in store.list("bob", None, 10, None)] == ["bob"]


def test_a_full_store_refuses_new_jobs_and_keeps_the_accepted_ones(store) -> None:
    accepted = [new_job() for _ in range(LIMITS.max_jobs)]
    for job in accepted:
        store.create(job, {})
    with pytest.raises(StoreFull):
        store.create(new_job(), {})
    assert all(store.get(job.id) is not None for job in accepted)


def test_finished_jobs_expire_after_the_retention_time_with_their_files(store) -> None:
    job, running = new_job(), new_job(created=time.time() + 1)
    store.create(job, {"image": b"picture"})
    store.create(running, {})
    store.claim("runner", LEASE_S)
    store.claim("runner", 60)
    store.finish(job.id, "runner", "completed", b"png", "image/png")
    assert store.expire(time.time()) == 0
    assert store.expire(time.time() + LIMITS.retention_s + 1) == 1  # the running one stays
    assert (
        store.get(job.id) is None
        and store.blob(job.id, "result") is None
        and store.blob(job.id, "image") is None
    )
    assert store.get(running.id).state == "running"


def test_progress_per_stage_and_an_oversized_result_fails_the_job(store) -> None:
    job = new_job()
    store.create(job, {})
    store.claim("runner", LEASE_S)
    store.set_progress(job.id, "image", 3, 8)
    store.set_progress(job.id, "image", 4, 8)
    assert {stage: (p.step, p.total) for stage, p in store.progress(job.id).items()} == {"image": (4, 8)}
    failed = store.finish(job.id, "runner", "completed", b"x" * (LIMITS.max_result_bytes + 1), "image/png")
    assert (failed.state, failed.status) == ("failed", 507) and "larger" in failed.error


def test_the_store_is_the_one_the_settings_name(tmp_path, redis_url) -> None:
    from genserve.core.settings import Settings
    from genserve.serving.job_store import job_store

    assert isinstance(job_store(Settings.from_env({"GENSERVE_JOB_STORE_URL": redis_url})), RedisJobStore)
    local = job_store(Settings.from_env({"GENSERVE_JOB_STORE_URL": f"sqlite:///{tmp_path}/jobs.db"}))
    assert isinstance(local, SQLiteJobStore) and local.path == tmp_path / "jobs.db"
    with pytest.raises(ValueError, match="GENSERVE_JOB_STORE_URL"):
        job_store(Settings.from_env({"GENSERVE_JOB_STORE_URL": "mysql://db/jobs"}))
