"""Where jobs live: their states, progress, inputs and results, shared by every process that serves.

Two stores keep the same records with the same rules. The embedded default is an SQLite file
(nothing to start; every process on one machine shares it). Several gateway replicas share a
Redis server instead (`GENSERVE_JOB_STORE_URL=redis://...`), so any replica answers any poll.

A job is run by whichever runner claims it: claiming takes a **lease** that the runner renews
while it works. A runner that dies stops renewing; once the lease has expired another runner
claims the job again and re-runs it with the same seed, so nothing accepted is lost. The lease
is also held while a finished job's webhook is delivered, so a delivery cut short is retried.

Calls are synchronous (sqlite3, redis-py) and cheap: the async callers run them in a thread, and
generators call them between denoising steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from genserve.core.protocol import JOB_DONE, JobKind, JobState
from genserve.core.settings import Settings

R = TypeVar("R")


class StoreFull(Exception):
    """The store holds as many jobs as it may: new ones are refused (503), accepted ones kept."""


class StageProgress(BaseModel):
    step: int
    total: int


class JobRecord(BaseModel):
    """Everything the store keeps of one job but its files (inputs and result), which are blobs."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: JobKind
    owner: str  # who may see it: a digest of the API key that made it ("" with no keys)
    state: JobState = "queued"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    seed: int
    fields: dict[str, Any]  # the validated request, files aside (they are blobs: image, mask)
    stages: list[str]  # the generators it passes through, in order: "image", "video"
    callback_url: str | None = None
    status: int | None = None  # a failed job's HTTP status
    error: str | None = None
    result_type: str | None = None  # the result's MIME type, once completed
    attempts: int = 0  # how many times a runner claimed it (more than one: taken over)
    webhook: Literal["pending", "delivered", "failed"] | None = None
    lease_owner: str | None = None
    lease_until: float = 0.0

    @property
    def done(self) -> bool:
        return self.state in JOB_DONE


@dataclass(frozen=True)
class StoreLimits:
    max_jobs: int  # jobs kept at once, in every state; a full store refuses new ones
    retention_s: float  # how long a finished job and its result are kept
    max_result_bytes: int


class JobStore:
    """The operations every store offers; the rules live here, the storage in the subclasses."""

    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits

    # Storage, per store.
    def _load(self, job_id: str) -> JobRecord | None:
        raise NotImplementedError

    def _update(self, job_id: str, change: Callable[[JobRecord], R]) -> R | None:
        """Apply `change` to the job and save it (its indexes follow), atomically; its result, or
        None if there is no such job. `change` may run more than once (on fresh data each time)."""
        raise NotImplementedError

    def create(self, job: JobRecord, blobs: dict[str, bytes]) -> None:
        """Add a job and its input files; StoreFull when the store holds `max_jobs` already."""
        raise NotImplementedError

    def list(self, owner: str, state: str | None, limit: int, before: float | None) -> list[JobRecord]:
        """`owner`'s jobs, newest first, created before `before` (a cursor), optionally in `state`."""
        raise NotImplementedError

    def position(self, job: JobRecord) -> int:
        """How many queued jobs are ahead of `job`."""
        raise NotImplementedError

    def claim(self, runner: str, lease_s: float) -> JobRecord | None:
        """A claimable job, now leased to `runner` (and running, unless only its webhook is left):
        first one abandoned by a runner whose lease ran out, else the oldest queued; or None."""
        raise NotImplementedError

    def blob(self, job_id: str, name: str) -> bytes | None:
        raise NotImplementedError

    def put_blob(self, job_id: str, name: str, data: bytes) -> None:
        raise NotImplementedError

    def set_progress(self, job_id: str, stage: str, step: int, total: int) -> None:
        raise NotImplementedError

    def progress(self, job_id: str) -> dict[str, StageProgress]:
        raise NotImplementedError

    def expire(self, now: float) -> int:
        """Delete finished jobs older than the retention time (webhooks delivered or given up),
        with their files; how many."""
        raise NotImplementedError

    # The rules, shared.
    def get(self, job_id: str) -> JobRecord | None:
        return self._load(job_id)

    def renew(self, job_id: str, runner: str, lease_s: float) -> bool:
        """Extend `runner`'s lease; False when the job is no longer its to run (cancelled, gone,
        or taken over after a lapse)."""

        def change(job: JobRecord) -> bool:
            if job.lease_owner != runner or (job.done and job.webhook != "pending"):
                return False
            job.lease_until = time.time() + lease_s
            return True

        return bool(self._update(job_id, change))

    def finish(
        self,
        job_id: str,
        runner: str,
        state: JobState,
        result: bytes | None = None,
        result_type: str | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> JobRecord | None:
        """Record how `runner`'s run ended; None (nothing changed) when the job is no longer its
        own, e.g. cancelled meanwhile. A result over the size limit fails the job instead."""
        if result is not None and len(result) > self.limits.max_result_bytes:
            state, result, status = "failed", None, 507
            error = f"the result is larger than the store keeps ({self.limits.max_result_bytes} bytes)"
        if result is not None:
            self.put_blob(job_id, "result", result)

        def change(job: JobRecord) -> JobRecord | None:
            if job.lease_owner != runner or job.state != "running":
                return None
            job.state, job.finished_at = state, time.time()
            job.result_type = result_type if state == "completed" else None
            job.status, job.error = status, error
            job.webhook = "pending" if job.callback_url else None
            return job.model_copy()

        return self._update(job_id, change)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job (a finished one is left as it is); the job after it."""

        def change(job: JobRecord) -> JobRecord:
            if not job.done:
                job.state, job.finished_at = "cancelled", time.time()
                job.webhook = "pending" if job.callback_url else None
                # Its runner loses the job (and stops); any runner may deliver the webhook, now.
                job.lease_owner, job.lease_until = None, 0.0
            return job.model_copy()

        return self._update(job_id, change)

    def webhook_done(self, job_id: str, runner: str, delivered: bool) -> None:
        def change(job: JobRecord) -> None:
            if job.lease_owner == runner and job.webhook == "pending":
                job.webhook = "delivered" if delivered else "failed"
                job.lease_owner, job.lease_until = None, 0.0

        self._update(job_id, change)

    def is_cancelled(self, job_id: str) -> bool:
        job = self._load(job_id)
        return job is not None and job.state == "cancelled"

    @staticmethod
    def _take(job: JobRecord, runner: str, lease_s: float, now: float) -> None:
        """Lease a claimable job to `runner`: a queued or abandoned running job (re-)starts."""
        if job.state in ("queued", "running"):
            job.state, job.started_at = "running", now
            job.attempts += 1
        job.lease_owner, job.lease_until = runner, now + lease_s


def _lease_until(job: JobRecord) -> float | None:
    """Until when a runner holds the job (None: nobody may claim it, it is queued or settled)."""
    held = job.state == "running" or (job.done and job.webhook == "pending")
    return job.lease_until if held else None


class SQLiteJobStore(JobStore):
    """The embedded store: one SQLite file that every process on the machine opens."""

    def __init__(self, path: Path, limits: StoreLimits) -> None:
        super().__init__(limits)
        self.path = path
        self._connections = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS jobs (
                    id TEXT PRIMARY KEY, owner TEXT, state TEXT, created_at REAL,
                    finished_at REAL, lease_until REAL, doc TEXT);
                CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
                CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_until);
                CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at);
                CREATE TABLE IF NOT EXISTS blobs (
                    job_id TEXT, name TEXT, data BLOB, PRIMARY KEY (job_id, name));
                CREATE TABLE IF NOT EXISTS progress (
                    job_id TEXT, stage TEXT, step INTEGER, total INTEGER, PRIMARY KEY (job_id, stage));
                """
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, opened once: the async callers' calls run in a pool of
        threads, and a poll of a job's status should not pay for opening the file."""
        db = getattr(self._connections, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            # Durable across a crash of any process; a power cut may lose the last moments, as
            # Redis's appendfsync everysec would: a sync to disk per commit (each step's progress)
            # costs more.
            db.execute("PRAGMA synchronous=NORMAL")
            self._connections.db = db
        yield db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A transaction that holds the write lock from its start: one writer at a time, across
        processes, so a read-then-write cannot interleave with another."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _read(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.model_validate_json(row[0]) if row else None

    @staticmethod
    def _save(db: sqlite3.Connection, job: JobRecord) -> None:
        db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, lease_until = ?, doc = ? WHERE id = ?",
            (job.state, job.finished_at, _lease_until(job), job.model_dump_json(), job.id),
        )

    def _load(self, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            return self._read(db, job_id)

    def _update(self, job_id: str, change: Callable[[JobRecord], R]) -> R | None:
        with self._writing() as db:
            job = self._read(db, job_id)
            if job is None:
                return None
            result = change(job)
            self._save(db, job)
            return result

    def create(self, job: JobRecord, blobs: dict[str, bytes]) -> None:
        with self._writing() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM jobs").fetchone()
            if count >= self.limits.max_jobs:
                raise StoreFull(f"the job store holds {count} jobs, its limit")
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, NULL, NULL, ?)",
                (job.id, job.owner, job.state, job.created_at, job.model_dump_json()),
            )
            db.executemany("INSERT INTO blobs VALUES (?, ?, ?)", [(job.id, n, d) for n, d in blobs.items()])

    def list(self, owner: str, state: str | None, limit: int, before: float | None) -> list[JobRecord]:
        query = "SELECT doc FROM jobs WHERE owner = ? AND created_at < ?"
        arguments: list[Any] = [owner, before if before is not None else float("inf")]
        if state is not None:
            query += " AND state = ?"
            arguments.append(state)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at DESC LIMIT ?", [*arguments, limit]).fetchall()
        return [JobRecord.model_validate_json(doc) for (doc,) in rows]

    def position(self, job: JobRecord) -> int:
        with self._connect() as db:
            query = "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND created_at < ?"
            (ahead,) = db.execute(query, (job.created_at,)).fetchone()
        return ahead

    def claim(self, runner: str, lease_s: float) -> JobRecord | None:
        now = time.time()
        with self._connect() as db:  # idle runners poll: look without taking the write lock
            query = "SELECT 1 FROM jobs WHERE lease_until < ? OR state = 'queued' LIMIT 1"
            if db.execute(query, (now,)).fetchone() is None:
                return None
        with self._writing() as db:
            row = db.execute(
                "SELECT doc FROM jobs WHERE lease_until < ? ORDER BY lease_until LIMIT 1", (now,)
            ).fetchone()
            row = (
                row
                or db.execute(
                    "SELECT doc FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
                ).fetchone()
            )
            if row is None:
                return None
            job = JobRecord.model_validate_json(row[0])
            self._take(job, runner, lease_s, now)
            self._save(db, job)
            return job

    def blob(self, job_id: str, name: str) -> bytes | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT data FROM blobs WHERE job_id = ? AND name = ?", (job_id, name)
            ).fetchone()
        return row[0] if row else None

    def put_blob(self, job_id: str, name: str, data: bytes) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (job_id, name, data))

    def set_progress(self, job_id: str, stage: str, step: int, total: int) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO progress VALUES (?, ?, ?, ?)", (job_id, stage, step, total))

    def progress(self, job_id: str) -> dict[str, StageProgress]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT stage, step, total FROM progress WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {stage: StageProgress(step=step, total=total) for stage, step, total in rows}

    def expire(self, now: float) -> int:
        with self._writing() as db:
            query = "SELECT id FROM jobs WHERE finished_at < ? AND lease_until IS NULL AND state != 'running'"
            ids = [(job_id,) for (job_id,) in db.execute(query, (now - self.limits.retention_s,))]
            for table, column in (("jobs", "id"), ("blobs", "job_id"), ("progress", "job_id")):
                db.executemany(f"DELETE FROM {table} WHERE {column} = ?", ids)
        return len(ids)


class RedisJobStore(JobStore):
    """The shared store: a Redis server that every gateway replica and generator reaches.

    Keys, under `prefix`: `job:<id>` the record (JSON), `blobs:<id>` a hash of its files,
    `progress:<id>` a hash of stage to "step/total". Sorted sets index them: `jobs` (every job,
    by creation: the size bound), `queue` (queued, by creation), `leases` (held, by lease end),
    `owner:<o>` (by creation: listing) and `finished` (by end: retention). A change is an
    optimistic transaction (WATCH, then MULTI), made again if another client changed the job.
    """

    def __init__(self, url: str, limits: StoreLimits, prefix: str = "genserve:") -> None:
        import redis  # only deployments with a Redis URL need it

        super().__init__(limits)
        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.prefix = prefix
        self._changed_meanwhile = redis.WatchError

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _load(self, job_id: str) -> JobRecord | None:
        doc = self.redis.get(self._key("job", job_id))
        return JobRecord.model_validate_json(doc) if doc else None

    def _many(self, ids: list[bytes]) -> list[JobRecord]:
        docs = self.redis.mget([self._key("job", job_id.decode()) for job_id in ids]) if ids else []
        return [JobRecord.model_validate_json(doc) for doc in docs if doc]

    def _save(self, pipe: Any, job: JobRecord) -> None:
        """Queue the writes that store `job` and keep the indexes in step with it."""
        pipe.set(self._key("job", job.id), job.model_dump_json())
        if job.state == "queued":
            pipe.zadd(self._key("queue"), {job.id: job.created_at})
        else:
            pipe.zrem(self._key("queue"), job.id)
        if (lease_until := _lease_until(job)) is not None:
            pipe.zadd(self._key("leases"), {job.id: lease_until})
        else:
            pipe.zrem(self._key("leases"), job.id)
        if job.done:
            pipe.zadd(self._key("finished"), {job.id: job.finished_at or time.time()})

    def _transaction(self, watched: list[str], work: Callable[[Any], R]) -> R:
        """`work(pipe)` reads (immediate while watching), calls `pipe.multi()`, queues writes;
        made again until no watched key changed in between."""
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(*watched)
                    result = work(pipe)
                    pipe.execute()
                    return result
                except self._changed_meanwhile:
                    continue

    def _update(self, job_id: str, change: Callable[[JobRecord], R]) -> R | None:
        key = self._key("job", job_id)

        def work(pipe: Any) -> R | None:
            doc = pipe.get(key)
            pipe.multi()
            if not doc:
                return None
            job = JobRecord.model_validate_json(doc)
            result = change(job)
            self._save(pipe, job)
            return result

        return self._transaction([key], work)

    def create(self, job: JobRecord, blobs: dict[str, bytes]) -> None:
        def work(pipe: Any) -> None:
            count = pipe.zcard(self._key("jobs"))
            if count >= self.limits.max_jobs:
                raise StoreFull(f"the job store holds {count} jobs, its limit")
            pipe.multi()
            if blobs:
                pipe.hset(self._key("blobs", job.id), mapping=blobs)
            pipe.zadd(self._key("jobs"), {job.id: job.created_at})
            pipe.zadd(self._key("owner", job.owner), {job.id: job.created_at})
            self._save(pipe, job)

        self._transaction([self._key("jobs")], work)

    def list(self, owner: str, state: str | None, limit: int, before: float | None) -> list[JobRecord]:
        found: list[JobRecord] = []
        top = f"({before}" if before is not None else "+inf"
        while len(found) < limit:  # filtered by state here: read pages until enough match
            ids = self.redis.zrevrangebyscore(self._key("owner", owner), top, "-inf", start=0, num=limit)
            jobs = self._many(ids)
            found += [job for job in jobs if state is None or job.state == state]
            if len(ids) < limit or not jobs:
                break
            top = f"({jobs[-1].created_at}"
        return found[:limit]

    def position(self, job: JobRecord) -> int:
        return self.redis.zcount(self._key("queue"), "-inf", f"({job.created_at}")

    def claim(self, runner: str, lease_s: float) -> JobRecord | None:
        queue, leases = self._key("queue"), self._key("leases")

        def work(pipe: Any) -> JobRecord | None:
            now = time.time()
            ids = pipe.zrangebyscore(leases, "-inf", f"({now}", start=0, num=1) or pipe.zrange(queue, 0, 0)
            if not ids:
                pipe.multi()
                return None
            doc = pipe.get(self._key("job", ids[0].decode()))
            pipe.multi()
            if not doc:  # expired meanwhile: drop the stale index entries
                pipe.zrem(queue, ids[0])
                pipe.zrem(leases, ids[0])
                return None
            job = JobRecord.model_validate_json(doc)
            self._take(job, runner, lease_s, now)
            self._save(pipe, job)
            return job

        return self._transaction([queue, leases], work)

    def blob(self, job_id: str, name: str) -> bytes | None:
        return self.redis.hget(self._key("blobs", job_id), name)

    def put_blob(self, job_id: str, name: str, data: bytes) -> None:
        self.redis.hset(self._key("blobs", job_id), name, data)

    def set_progress(self, job_id: str, stage: str, step: int, total: int) -> None:
        self.redis.hset(self._key("progress", job_id), stage, f"{step}/{total}")

    def progress(self, job_id: str) -> dict[str, StageProgress]:
        stages = self.redis.hgetall(self._key("progress", job_id))
        steps = {stage.decode(): value.decode().split("/") for stage, value in stages.items()}
        return {
            stage: StageProgress(step=int(step), total=int(total)) for stage, (step, total) in steps.items()
        }

    def expire(self, now: float) -> int:
        ids = self.redis.zrangebyscore(self._key("finished"), "-inf", now - self.limits.retention_s)
        expired = [job for job in self._many(ids) if _lease_until(job) is None]
        for job in expired:
            pipe = self.redis.pipeline()
            pipe.delete(self._key("job", job.id), self._key("progress", job.id), self._key("blobs", job.id))
            for index in ("jobs", "finished", "queue", "leases", f"owner:{job.owner}"):
                pipe.zrem(self._key(index), job.id)
            pipe.execute()
        return len(expired)


def job_store(settings: Settings) -> JobStore:
    """The store the settings name: `redis://...` (or `rediss://`), `sqlite:///<path>`, or by
    default an SQLite file in the BentoML home, which every process of a `bentoml serve` shares."""
    jobs = settings.jobs
    limits = StoreLimits(jobs.max_jobs, jobs.retention_s, jobs.max_result_bytes)
    url = jobs.store_url
    if url is None:
        home = Path(os.environ.get("BENTOML_HOME") or "~/bentoml").expanduser()  # as BentoML finds it
        return SQLiteJobStore(home / "genserve-jobs.db", limits)
    if url.startswith(("redis://", "rediss://")):
        return RedisJobStore(url, limits)
    if url.startswith("sqlite:///"):
        return SQLiteJobStore(Path(url.removeprefix("sqlite:///")), limits)
    raise ValueError(
        f"GENSERVE_JOB_STORE_URL={url!r}: expected redis://..., rediss://... or sqlite:///<path>"
    )


def job_document(job: JobRecord, progress: dict[str, StageProgress], position: int | None) -> dict:
    """A job as the API shows it: no owner, no lease; progress per stage and as a whole."""
    stages = {stage: progress.get(stage) for stage in job.stages}
    done_fraction = 1.0 if job.state == "completed" else _fraction(stages)
    document = job.model_dump(
        include={
            "id",
            "kind",
            "state",
            "created_at",
            "started_at",
            "finished_at",
            "seed",
            "error",
            "attempts",
        }
    )
    document["fields"] = job.fields
    document["progress"] = {
        "fraction": done_fraction,
        "stages": {
            stage: {"step": p.step, "total": p.total, "fraction": p.step / p.total if p and p.total else 0.0}
            if p
            else {"step": 0, "total": None, "fraction": 0.0}
            for stage, p in stages.items()
        },
        "eta_s": _eta(job, done_fraction),
    }
    if position is not None:
        document["position"] = position
    if job.state == "completed":
        document["result"] = {"media_type": job.result_type, "url": f"/jobs/{job.id}/result"}
    return document


def _fraction(stages: dict[str, StageProgress | None]) -> float:
    """The share of the job's denoising steps done, each stage weighing alike (below 1 until completed)."""
    if not stages:
        return 0.0
    parts = [min(p.step / p.total, 1.0) if p and p.total else 0.0 for p in stages.values()]
    return min(sum(parts) / len(parts), 0.999)


def _eta(job: JobRecord, fraction: float) -> float | None:
    """Seconds left at the pace so far; None before any step or once finished."""
    if job.done or job.started_at is None or fraction <= 0:
        return None
    elapsed = time.time() - job.started_at
    return round(elapsed * (1 - fraction) / fraction, 1)


def dumps(document: dict) -> str:
    return json.dumps(document, separators=(",", ":"))
