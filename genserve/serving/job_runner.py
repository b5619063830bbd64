"""Running jobs: each entry worker claims jobs from the store and runs them through the generators.

A runner claims a job (a lease in the store), runs its stages exactly as the job's endpoint would
(serving/produce.py), records the outcome and delivers the job's webhook, renewing the lease all
the while. Up to GENSERVE_JOB_RUNNERS jobs run at once per worker, so concurrent jobs join the
generators' batches. If the worker dies, its leases lapse and a runner elsewhere re-runs the job
with the seed it was submitted with: the same result, nothing accepted lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from pydantic import BaseModel

from genserve.core.protocol import JobKind
from genserve.core.schemas import EditJob
from genserve.core.settings import Settings
from genserve.serving.job_store import JobRecord, JobStore, job_document
from genserve.serving.produce import Produced, Producer
from genserve.serving.webhooks import WebhookSettings, deliver

logger = logging.getLogger(__name__)

#: The files each kind of job takes, as its endpoint does.
FILES: dict[JobKind, tuple[str, ...]] = {
    "img2img": ("image",),
    "inpaint": ("image", "mask"),
    "img2vid": ("image",),
}
#: The generators a job passes through: its progress has a part for each.
STAGES: dict[JobKind, tuple[str, ...]] = {
    "txt2img": ("image",),
    "img2img": ("image",),
    "inpaint": ("image",),
    "img2vid": ("video",),
    "txt2vid": ("image", "video"),
}
IDLE_POLL_S = 0.2  # how often an idle runner looks for work submitted to other workers
EXPIRE_EVERY_S = 60.0  # how often a runner deletes expired jobs


class JobRunner:
    """Claims and runs jobs in this worker; `models` are the request models of each kind."""

    def __init__(
        self,
        store: JobStore,
        producer: Producer,
        models: dict[JobKind, type[BaseModel]],
        settings: Settings,
        webhooks: WebhookSettings,
    ) -> None:
        self.store = store
        self.producer = producer
        self.models = models
        self.lease_s = settings.jobs.lease_s
        self.webhooks = webhooks
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.slots = asyncio.Semaphore(settings.jobs.runners)
        self.running: set[asyncio.Task] = set()
        self._work_arrived = asyncio.Event()

    def wake(self) -> None:
        """A job was submitted in this worker: look now rather than at the next poll."""
        self._work_arrived.set()

    async def run_forever(self) -> None:
        expired_at = 0.0
        while True:
            await self.slots.acquire()
            job = await self._claim()
            if job is None:
                self.slots.release()
                if time.time() - expired_at > EXPIRE_EVERY_S:
                    expired_at = time.time()
                    await self._expire(expired_at)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work_arrived.wait(), IDLE_POLL_S)
                self._work_arrived.clear()
                continue
            task = asyncio.create_task(self._handle(job), name=f"job-{job.id}")
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _claim(self) -> JobRecord | None:
        try:
            return await asyncio.to_thread(self.store.claim, self.id, self.lease_s)
        except Exception as error:  # the store unreachable: try again later, nothing is lost
            logger.warning("could not claim jobs: %r", error)
            return None

    async def _expire(self, now: float) -> None:
        try:
            await asyncio.to_thread(self.store.expire, now)
        except Exception as error:  # the store unreachable: the next sweep deletes them
            logger.warning("could not delete expired jobs: %r", error)

    async def _handle(self, job: JobRecord) -> None:
        try:
            finished = await self._run(job) if job.state == "running" else job  # else: only its webhook
            if finished is not None and finished.webhook == "pending":
                await self._deliver(finished)
        except Exception:
            logger.exception("job %s: the runner failed; another takes it over once its lease lapses", job.id)
        finally:
            self.slots.release()

    async def _run(self, job: JobRecord) -> JobRecord | None:
        """Run the job; the record as finished, or None if it stopped being this runner's."""
        if job.attempts > 1:
            logger.warning(
                "job %s: taken over (attempt %d), run again with seed %d", job.id, job.attempts, job.seed
            )
        produced = await self._leased(job.id, self.produce(job))
        if produced is None:
            return None
        if produced.error is None:
            outcome = ("completed", produced.data, produced.media_type, None, None)
        else:
            outcome = ("failed", None, None, produced.status, produced.error)
        return await asyncio.to_thread(self.store.finish, job.id, self.id, *outcome)

    async def _leased(self, job_id: str, work: Awaitable[Any]) -> Any:
        """Await `work` while renewing the job's lease; None if the lease was lost (the job was
        cancelled or taken over), in which case `work` is cancelled: its generator calls are
        abandoned between steps."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.lease_s / 3)
            if done:
                return task.result()
            try:
                kept = await asyncio.to_thread(self.store.renew, job_id, self.id, self.lease_s)
            except Exception as error:  # the store unreachable: go on; the lease may still hold
                logger.warning("job %s: could not renew its lease: %r", job_id, error)
                continue
            if not kept:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None

    async def produce(self, job: JobRecord) -> Produced:
        """What the job's endpoint would make of its fields and files."""
        request = self.models[job.kind](**job.fields)
        files = {
            name: await asyncio.to_thread(self.store.blob, job.id, name) for name in FILES.get(job.kind, ())
        }
        options = {"job_id": job.id, "wait_if_busy": True}
        if job.kind == "txt2img":
            return await self.producer.image(request, **options)
        if job.kind in ("img2img", "inpaint"):
            edit = EditJob(image=files["image"], mask=files.get("mask"), request=request)
            return await self.producer.image(edit, **options)
        if job.kind == "img2vid":
            return await self.producer.video(files["image"], request, **options)
        return await self.producer.text_to_video(request, job_id=job.id)

    async def _deliver(self, job: JobRecord) -> None:
        """The job's webhook, signed, retried, under the job's lease; recorded as delivered or not."""
        progress = await asyncio.to_thread(self.store.progress, job.id)
        event = {
            "type": f"job.{job.state}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.finished_at)),
            "data": job_document(job, progress, None),
        }
        assert job.callback_url is not None  # a pending webhook has one
        delivered = await self._leased(
            job.id, deliver(job.callback_url, event, f"msg_{job.id}", self.webhooks)
        )
        if delivered is not None:
            await asyncio.to_thread(self.store.webhook_done, job.id, self.id, delivered)
