"""The jobs API, `/jobs`: submit any kind of work as a job, watch it, cancel it, list yours.

    POST   /jobs/{kind}          submit (kind: txt2img, img2img, inpaint, img2vid, txt2vid) -> 202
    GET    /jobs                 your jobs, newest first (?state=, ?limit=, ?before= cursor)
    GET    /jobs/{id}            state, queue position, progress per stage, ETA, error
    GET    /jobs/{id}/events     the same as server-sent events, until the job ends
    GET    /jobs/{id}/result     the file, once completed
    DELETE /jobs/{id}            cancel (also POST /jobs/{id}/cancel)

A submission takes the body of its endpoint (JSON for txt2img and txt2vid, a multipart form with
the files for the others), checked the same way at once, plus an optional `callback_url` for a
webhook. Jobs belong to the API key that made them: another key gets 404, as if there were no
such job (with no keys configured, everyone is one tenant). The store and the runners are in
serving/job_store.py and serving/job_runner.py.

BentoML's task API of txt2vid (`/txt2vid/submit`, `status`, `get`, `cancel`, `retry`), which the
BentoML client SDK's `client.txt2vid.submit(...)` calls, is served from the same store, in
BentoML's shapes: its tasks are txt2vid jobs, so they too survive their replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from genserve.core.protocol import JOB_DONE, JobKind, JobState
from genserve.core.settings import Settings
from genserve.serving.auth import bearer_token
from genserve.serving.dispatch import RETRY_AFTER_S
from genserve.serving.http import error_response, invalid_fields, media_response
from genserve.serving.job_runner import FILES, STAGES
from genserve.serving.job_store import JobRecord, JobStore, StoreFull, dumps, job_document
from genserve.serving.uploads import UploadError, check_edit, check_image_upload
from genserve.serving.webhooks import CallbackRefused, WebhookSettings, check_callback_url

PREFIX = "/jobs"
JOB_ID = re.compile(r"[0-9a-f]{32}")
CALLBACK_FIELD = "callback_url"
MAX_LIST = 100
EVENTS_POLL_S = 0.25  # how often an event stream looks at its job
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
JSON_KINDS = ("txt2img", "txt2vid")
#: BentoML's task API of the txt2vid endpoint, served from the job store.
TASK_PREFIX = "/txt2vid"
TASK_ROUTES = tuple(f"{TASK_PREFIX}/{action}" for action in ("submit", "status", "get", "cancel", "retry"))
#: Job states as BentoML's task API words them (`ResultStatus`).
TASK_STATUS = {
    "queued": "in_progress",
    "running": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "canceled",
}


class JobsAPI:
    """The routes, over one store; `models` are the request models of each kind (service.py's)."""

    def __init__(
        self,
        store: JobStore,
        models: dict[JobKind, type[BaseModel]],
        settings: Settings,
        webhooks: WebhookSettings,
        submitted: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.webhooks = webhooks
        self.submitted = submitted  # told of every new job: this worker's runner starts it at once
        self.keyed = bool(settings.api_keys) or settings.api_keys_file is not None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/jobs", self.list, methods=["GET"]),
                Route("/jobs/{job_id}", self.show, methods=["GET"]),
                Route("/jobs/{job_id}", self.cancel, methods=["DELETE"]),
                Route("/jobs/{job_id}/cancel", self.cancel, methods=["POST"]),
                Route("/jobs/{job_id}/result", self.result, methods=["GET"]),
                Route("/jobs/{job_id}/events", self.events, methods=["GET"]),
                Route("/jobs/{kind}", self.submit, methods=["POST"]),
                Route(f"{TASK_PREFIX}/submit", self.task_submit, methods=["POST"]),
                Route(f"{TASK_PREFIX}/status", self.task_status, methods=["GET"]),
                Route(f"{TASK_PREFIX}/get", self.task_result, methods=["GET"]),
                Route(f"{TASK_PREFIX}/cancel", self.task_cancel, methods=["PUT"]),
                Route(f"{TASK_PREFIX}/retry", self.task_retry, methods=["POST"]),
            ],
            exception_handlers={HTTPException: _http_error},
        )

    def owner(self, request: Request) -> str:
        """Who the caller is: a digest of its key (the auth middleware has checked it), or "" with
        no keys configured. A digest, so the store never holds a key."""
        token = bearer_token(request.scope) if self.keyed else None
        return hashlib.sha256(token.encode()).hexdigest()[:32] if token else ""

    async def _own_job(self, request: Request) -> JobRecord | Response:
        """The caller's job named in the path (a task's: in `?task_id=`), or the 4xx that says why not."""
        field = "job_id" if "job_id" in request.path_params else "task_id"
        job_id = request.path_params.get("job_id") or request.query_params.get("task_id")
        if job_id is None:
            return error_response(400, "task_id is required", field)
        if not JOB_ID.fullmatch(job_id):
            return error_response(400, f"{job_id!r} is not a {field} (32 hexadecimal digits)", field)
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None or job.owner != self.owner(request):
            return error_response(404, f"no job {job_id}", field)
        return job

    async def _document(self, job: JobRecord) -> dict:
        progress = await asyncio.to_thread(self.store.progress, job.id)
        position = await asyncio.to_thread(self.store.position, job) if job.state == "queued" else None
        return job_document(job, progress, position)

    async def submit(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in STAGES:
            return error_response(404, f"no such kind of job {kind!r}: one of {', '.join(STAGES)}", "kind")
        job = await self._create(request, kind)
        if isinstance(job, Response):
            return job
        headers = {"Location": f"{PREFIX}/{job.id}"}
        return JSONResponse(await self._document(job), status_code=202, headers=headers)

    async def _create(
        self, request: Request, kind: JobKind, fields: dict | None = None
    ) -> JobRecord | Response:
        """A new job of `kind` from the request's body (or `fields`, with no files), checked as its
        endpoint checks it, in the store; or the 4xx/503 that says why not."""
        try:
            fields, files = (fields, {}) if fields is not None else await self._read(request, kind)
            callback = fields.pop(CALLBACK_FIELD, None)
            if callback is not None:
                check_callback_url(str(callback), self.webhooks)
            checked = self.models[kind].model_validate(fields)
            self._check_files(kind, files, checked)
        except CallbackRefused as error:
            return error_response(400, f"{CALLBACK_FIELD}: {error}", CALLBACK_FIELD)
        except ValidationError as error:
            return invalid_fields(error, f"{kind} job")
        except UploadError as error:
            return error_response(error.status, str(error), error.field)
        job = JobRecord(
            id=uuid.uuid4().hex,
            kind=kind,
            owner=self.owner(request),
            created_at=time.time(),
            seed=checked.seed,  # fixed now: a re-run after a takeover makes the same result
            fields=checked.model_dump(mode="json"),
            stages=list(STAGES[kind]),
            callback_url=callback,
        )
        try:
            await asyncio.to_thread(self.store.create, job, files)
        except StoreFull as error:
            return error_response(503, f"{error}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.submitted()
        return job

    async def _read(self, request: Request, kind: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The submission's fields and files: a JSON object, or a multipart form with the files."""
        if kind in JSON_KINDS:
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError as error:
                raise UploadError("body", f"the body is not JSON: {error}") from None
            if not isinstance(body, dict):
                raise UploadError("body", "the body must be a JSON object")
            return body, {}
        form = await request.form(max_files=len(FILES[kind]))
        files = {}
        for name in FILES[kind]:
            upload = form.get(name)
            if not isinstance(upload, UploadFile):
                raise UploadError(name, f"{name} is required: a PNG, JPEG or WebP file")
            files[name] = await upload.read()
        fields = {name: value for name, value in form.multi_items() if name not in FILES[kind]}
        return fields, files

    def _check_files(self, kind: str, files: dict[str, bytes], request: BaseModel) -> None:
        """The files as their endpoint checks them; an edit's also against the image preset."""
        if kind in ("img2img", "inpaint"):
            check_edit(files["image"], files.get("mask"), request, self.settings.image.preset)
        elif kind == "img2vid":
            check_image_upload(files["image"])

    async def show(self, request: Request) -> Response:
        job = await self._own_job(request)
        if isinstance(job, Response):
            return job
        return JSONResponse(await self._document(job))

    async def list(self, request: Request) -> Response:
        query = request.query_params
        state = query.get("state")
        if state is not None and state not in get_args(JobState):
            return error_response(400, f"state must be one of {', '.join(get_args(JobState))}", "state")
        try:
            limit = int(query.get("limit", 20))
            before = float(query["before"]) if "before" in query else None
        except ValueError:
            return error_response(400, "limit must be an integer and before a number (a cursor)", "limit")
        if not 1 <= limit <= MAX_LIST:
            return error_response(400, f"limit must be from 1 to {MAX_LIST}", "limit")
        jobs = await asyncio.to_thread(self.store.list, self.owner(request), state, limit, before)
        documents = [await self._document(job) for job in jobs]
        cursor = jobs[-1].created_at if len(jobs) == limit else None
        return JSONResponse({"jobs": documents, "next_before": cursor})

    async def cancel(self, request: Request) -> Response:
        job = await self._own_job(request)
        if isinstance(job, Response):
            return job
        if job.done:
            return error_response(409, f"job {job.id} has already ended: {job.state}", "job_id")
        cancelled = await asyncio.to_thread(self.store.cancel, job.id)
        return JSONResponse(await self._document(cancelled))

    async def result(self, request: Request) -> Response:
        job = await self._own_job(request)
        if isinstance(job, Response):
            return job
        if job.state != "completed":
            reason = f": {job.error}" if job.state == "failed" else ""
            return error_response(409, f"job {job.id} is {job.state}{reason}; no result", "job_id")
        data = await asyncio.to_thread(self.store.blob, job.id, "result")
        if data is None:
            return error_response(404, f"the result of job {job.id} has expired", "job_id")
        extension = job.fields.get("output_format", "bin")
        return media_response(data, job.result_type or "application/octet-stream", job.seed, extension)

    async def events(self, request: Request) -> Response:
        job = await self._own_job(request)
        if isinstance(job, Response):
            return job
        return StreamingResponse(
            self._changes(job.id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _changes(self, job_id: str) -> AsyncIterator[str]:
        """An event whenever the job's document changes (`state` when its state does, `progress`
        otherwise), the last when it ends; a comment line when nothing changed for a while."""
        last: dict | None = None
        quiet_since = time.monotonic()
        while True:
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None:
                yield _event("error", {"error": f"job {job_id} has expired"})
                return
            document = await self._document(job)
            if document != last:
                kind = "state" if last is None or last["state"] != document["state"] else "progress"
                yield _event(kind, document)
                last, quiet_since = document, time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield ": still working\n\n"
                quiet_since = time.monotonic()
            if job.state in JOB_DONE:
                return
            await asyncio.sleep(EVENTS_POLL_S)

    # BentoML's task API of txt2vid, on the job store.

    async def task_submit(self, request: Request) -> Response:
        job = await self._create(request, "txt2vid")
        if isinstance(job, Response):
            return job
        return JSONResponse(_task(job))

    async def task_status(self, request: Request) -> Response:
        job = await self._own_job(request)
        return job if isinstance(job, Response) else JSONResponse(_task(job))

    async def task_result(self, request: Request) -> Response:
        """The video; a failed job's error with its status, as BentoML keeps a failed task's answer."""
        job = await self._own_job(request)
        if isinstance(job, Response):
            return job
        if job.state == "failed":
            return error_response(job.status or 500, job.error or "the job failed")
        if job.state != "completed":
            return error_response(
                400, f"task {job.id} is not completed yet: {TASK_STATUS[job.state]}", "task_id"
            )
        return await self.result(request)

    async def task_cancel(self, request: Request) -> Response:
        job = await self._own_job(request)
        if isinstance(job, Response):
            return job
        cancelled = await asyncio.to_thread(self.store.cancel, job.id)
        return JSONResponse(_task(cancelled))

    async def task_retry(self, request: Request) -> Response:
        """The same job again, as a new task (same fields, the same seed)."""
        job = await self._own_job(request)
        if isinstance(job, Response):
            return job
        if not job.done:
            return error_response(400, f"task {job.id} is not completed yet", "task_id")
        again = await self._create(request, "txt2vid", dict(job.fields))
        return again if isinstance(again, Response) else JSONResponse(_task(again))


def _task(job: JobRecord) -> dict:
    """A job as BentoML's task API shows a task."""

    def iso(moment: float | None) -> str | None:
        return datetime.fromtimestamp(moment, UTC).isoformat() if moment else None

    return {
        "task_id": job.id,
        "status": TASK_STATUS[job.state],
        "created_at": iso(job.created_at),
        "executed_at": iso(job.started_at),
    }


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {dumps(data)}\n\n"


async def _http_error(request: Request, error: Exception) -> Response:
    """Wrong methods and unknown paths under /jobs, in the API's JSON error shape too."""
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, str(error.detail), headers=error.headers)


class JobsRoute:
    """ASGI middleware: requests to /jobs and below, and to txt2vid's task API, go to the jobs API;
    the rest pass through.
    (A middleware rather than a mounted app: a mount would answer `/jobs` itself with a redirect.)"""

    def __init__(self, app: ASGIApp, jobs: Any) -> None:
        self.app = app
        self.jobs = jobs  # a callable that returns the jobs app, built once the service runs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (
            path == PREFIX or path.startswith(f"{PREFIX}/") or path in TASK_ROUTES
        ):
            await self.jobs()(scope, receive, send)
            return
        await self.app(scope, receive, send)
