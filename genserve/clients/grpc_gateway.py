"""The gRPC front door: the original project's `image_gen.proto`, forwarded to genserve's HTTP API.

BentoML 1.4's services cannot serve gRPC, so this is a process of its own (`python -m
genserve.clients.grpc_gateway`, its own Deployment) that calls the service through BentoML's client
SDK: the service stays the one place that validates, batches and generates, and its 4xx
errors come back as INVALID_ARGUMENT naming the same field.

The served contract is `proto/image_gen.proto` itself, compiled in-process at start-up by
grpcio-tools' protoc into a descriptor pool: no generated code to keep in step with the file,
and server reflection (for grpcurl and Postman) describes exactly that file. Clients generate
their stubs from the same file. The standard health service (grpc.health.v1) says SERVING while
the API behind is ready.

Settings (environment): GENSERVE_URL (the service), GENSERVE_GRPC_HOST / GENSERVE_GRPC_PORT
(where to listen), GENSERVE_GRPC_MAX_MESSAGE_MB (largest message either way) and
GENSERVE_REQUEST_TIMEOUT_S (longest wait for one generation, and for calls in flight on SIGTERM).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import bentoml
import grpc
import httpx
from bentoml.exceptions import BentoMLException
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_tools import protoc

from genserve.clients.api import api_url, parse_error
from genserve.clients.sdk import JobCanceled, result, text_to_video, upload
from genserve.core.protocol import DEFAULT_TIMEOUT_S, VIDEO_FORMATS, parse_bearer
from genserve.core.schemas import TextToVideoRequest, VideoRequest, random_seed
from genserve.core.settings import positive_int

logger = logging.getLogger(__name__)

PROTO = Path(__file__).resolve().parents[2] / "proto" / "image_gen.proto"
SERVICE = "ImageGenerator"
MIB = 1024 * 1024

#: Large enough for a 4096x4096 PNG in `image_data`. The worst case is incompressible pixels,
#: which zlib stores as they are: 4096 rows x (1 filter byte + 4096 x 3) = 50,335,744 bytes, plus
#: zlib's and PNG's framing (~18 KB) = 50.35 MB (48.0 MiB); base64 makes it 4/3 of that,
#: 67.14 MB = 64.03 MiB: just over the 64 MiB often chosen. 65 MiB holds it and the reply's
#: other fields. (Video files and uploads are far smaller: uploads stop at 32 MiB.)
DEFAULT_MAX_MESSAGE_MB = 65
DEFAULT_PORT = 50051
HEALTH_POLL_S = 2  # how often the health service asks the API behind whether it is ready

#: Fields of text to video that image to video does not take.
TEXT_ONLY_FIELDS = TextToVideoRequest.model_fields.keys() - VideoRequest.model_fields.keys()

T = TypeVar("T")


@dataclass(frozen=True)
class GatewaySettings:
    """Where the service is, where to listen, and how large a message may be."""

    url: str
    host: str
    port: int
    max_message_bytes: int
    timeout_s: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> GatewaySettings:
        return cls(
            url=api_url(environ),
            host=environ.get("GENSERVE_GRPC_HOST") or "[::]",
            port=positive_int(environ, "GENSERVE_GRPC_PORT", DEFAULT_PORT),
            max_message_bytes=MIB
            * positive_int(environ, "GENSERVE_GRPC_MAX_MESSAGE_MB", DEFAULT_MAX_MESSAGE_MB),
            timeout_s=positive_int(environ, "GENSERVE_REQUEST_TIMEOUT_S", DEFAULT_TIMEOUT_S),
        )


def load_contract(proto: Path = PROTO) -> FileDescriptor:
    """Compile the .proto file into a descriptor pool of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        compiled = Path(tmp) / "contract.pb"
        status = protoc.main(
            ["protoc", f"--proto_path={proto.parent}", f"--descriptor_set_out={compiled}", proto.name]
        )
        if status != 0:
            raise RuntimeError(f"protoc could not compile {proto} (exit status {status})")
        [file] = descriptor_pb2.FileDescriptorSet.FromString(compiled.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    # So that reflection describes itself and the health service too.
    pool.AddSerializedFile(reflection_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindFileByName(file.name)


def api_key(context: grpc.aio.ServicerContext) -> str | None:
    """The key from `authorization: Bearer <key>` metadata, as the HTTP API takes it."""
    for name, value in context.invocation_metadata() or ():
        if name == "authorization" and isinstance(value, str):
            return parse_bearer(value)
    return None


def invalid_fields(body: str) -> str:
    """The service's 4xx error body as `field: message`, so the gRPC error names the field too."""
    message, fields = parse_error(body)
    return "; ".join(f"{field}: {text}" for field, text in fields) or message


#: The service's refusals that are not about the request's fields, and what the caller is told.
REFUSALS: dict[int, tuple[grpc.StatusCode, str]] = {
    401: (grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key: send 'authorization: Bearer <key>'"),
    403: (grpc.StatusCode.PERMISSION_DENIED, "this API key may not do that"),
    429: (grpc.StatusCode.RESOURCE_EXHAUSTED, "the generators are busy; retry later"),
    503: (grpc.StatusCode.UNAVAILABLE, "the generators are busy or loading; retry later"),
    504: (grpc.StatusCode.DEADLINE_EXCEEDED, "generation took longer than the service's timeout"),
}


def grpc_error(status: int, body: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for the service's HTTP error: other 4xx name the bad fields."""
    if status in REFUSALS:
        return REFUSALS[status]
    if 400 <= status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT, invalid_fields(body)
    return grpc.StatusCode.INTERNAL, f"the service answered {status}: {body[:500]}"


async def set_up(client: bentoml.AsyncHTTPClient, context: grpc.aio.ServicerContext) -> None:
    """The SDK client's setup (what `async with` does; the caller closes it): it fetches the API
    schema, and reports a refusal there (a bad key, say) without its status, so ask once more."""
    try:
        await client.__aenter__()
    except BentoMLException:
        refusal = await client.request("GET", "/schema.json")
        if refusal.is_error:
            await context.abort(*grpc_error(refusal.status_code, refusal.text))
        raise


class Gateway:
    """The `ImageGenerator` gRPC service, each call forwarded to the BentoML service."""

    def __init__(self, contract: FileDescriptor, settings: GatewaySettings) -> None:
        self.contract = contract
        self.settings = settings
        messages = contract.message_types_by_name
        self.ImageResponse = message_factory.GetMessageClass(messages["ImageResponse"])
        self.VideoResponse = message_factory.GetMessageClass(messages["VideoResponse"])

    @property
    def service_name(self) -> str:
        return self.contract.services_by_name[SERVICE].full_name

    def handler(self) -> grpc.GenericRpcHandler:
        service = self.contract.services_by_name[SERVICE]
        methods = {
            "GenerateImage": self.generate_image,
            "EditImage": self.edit_image,
            "GenerateVideo": self.generate_video,
        }
        handlers = {}
        for name, method in methods.items():
            request = message_factory.GetMessageClass(service.methods_by_name[name].input_type)
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=lambda reply: reply.SerializeToString(),
            )
        return grpc.method_handlers_generic_handler(service.full_name, handlers)

    async def _forward(
        self,
        context: grpc.aio.ServicerContext,
        call: Callable[[bentoml.AsyncHTTPClient], Awaitable[T]],
    ) -> T:
        """Run `call` with an SDK client that carries the caller's key; map failures to gRPC codes.

        A client per call, because the key is the caller's; its setup is one schema request.
        """
        client = bentoml.AsyncHTTPClient(
            self.settings.url, token=api_key(context), timeout=self.settings.timeout_s, server_ready_timeout=0
        )
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await set_up(client, context)
                return await call(client)
        except BentoMLException as error:
            await context.abort(*grpc_error(int(error.error_code), str(error)))
        except (TimeoutError, httpx.TimeoutException):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "generation took too long")
        except JobCanceled as error:
            await context.abort(grpc.StatusCode.ABORTED, str(error))
        except httpx.TransportError as error:
            logger.warning("genserve at %s is unreachable: %r", self.settings.url, error)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the genserve service is unreachable")
        finally:
            await client.close()

    async def _png_reply(
        self,
        context: grpc.aio.ServicerContext,
        call: Callable[[bentoml.AsyncHTTPClient], Awaitable[bytes]],
        seed: int,
    ) -> Message:
        """Forward `call`, whose result is a PNG, and reply with it in base64 and its seed."""
        data = await self._forward(context, call)
        return self.ImageResponse(image_data=base64.b64encode(data).decode("ascii"), seed=seed)

    async def generate_image(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        fields = image_fields(request)

        async def call(client: bentoml.AsyncHTTPClient) -> bytes:
            return await result(await client.txt2img(**fields, output_format="png"))

        return await self._png_reply(context, call, fields["seed"])

    async def edit_image(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        """Image to image, or inpainting when a mask is set: the same fields, one more file."""
        fields = image_fields(request)
        files = {name: fields.pop(name) for name in ("image", "mask") if name in fields}
        if "image" not in files:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image: an image file is required")

        async def call(client: bentoml.AsyncHTTPClient) -> bytes:
            with ExitStack() as stack:
                paths = {name: stack.enter_context(upload(data, name)) for name, data in files.items()}
                edit = client.inpaint if "mask" in paths else client.img2img
                return await result(await edit(**paths, **fields, output_format="png"))

        return await self._png_reply(context, call, fields["seed"])

    async def generate_video(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        fields = fields_of(request)
        fields.setdefault("seed", random_seed())
        fields.setdefault("output_format", VideoRequest.model_fields["output_format"].default)
        image = fields.pop("image", None)
        if image is None and "prompt" not in fields:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt or image: one is required")
        if image is not None and (text_only := sorted(TEXT_ONLY_FIELDS & fields.keys())):
            message = f"{', '.join(text_only)}: only for text to video (with a prompt), not with an image"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        async def image_to_video(client: bentoml.AsyncHTTPClient) -> bytes:
            with upload(image) as path:
                return await result(await client.img2vid(image=path, **fields))

        async def from_text(client: bentoml.AsyncHTTPClient) -> bytes:
            # A JobTimeout is a TimeoutError: DEADLINE_EXCEEDED, as the call's own deadline.
            return await text_to_video(client, fields, self.settings.timeout_s)

        data = await self._forward(context, from_text if image is None else image_to_video)
        fmt = fields["output_format"]
        return self.VideoResponse(video_data=data, mime_type=VIDEO_FORMATS[fmt], seed=fields["seed"])


def fields_of(request: Message) -> dict[str, Any]:
    """The fields the caller set: unset ones are left to the service's preset defaults."""
    return {field.name: value for field, value in request.ListFields()}


def image_fields(request: Message) -> dict[str, Any]:
    """An image request's fields, the prompt always (an empty one is the service's to name) and
    the seed chosen here if unset, so that the reply can report it."""
    fields = {"prompt": request.prompt, **fields_of(request)}
    fields.setdefault("seed", random_seed())
    return fields


async def report_health(servicer: health.aio.HealthServicer, names: tuple[str, ...], url: str) -> None:
    """Keep the standard gRPC health service (grpc.health.v1) in step with the API behind: SERVING
    while its /readyz answers 200, NOT_SERVING otherwise, for the gateway as a whole ("") and its
    service. Kubernetes' gRPC readiness probe reads it, so no call is routed to a gateway that
    could only answer UNAVAILABLE."""
    serving = health_pb2.HealthCheckResponse.SERVING
    async with httpx.AsyncClient(timeout=HEALTH_POLL_S) as client:
        while True:
            try:
                ready = (await client.get(f"{url}/readyz")).status_code == 200
            except httpx.HTTPError:
                ready = False
            for name in names:
                await servicer.set(name, serving if ready else health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(HEALTH_POLL_S)


async def serve(settings: GatewaySettings) -> None:
    """Serve, with reflection, health and the message limit both ways, until SIGTERM or SIGINT."""
    gateway = Gateway(load_contract(), settings)
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    )
    server.add_generic_rpc_handlers((gateway.handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (gateway.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
        pool=gateway.contract.pool,
    )
    address = f"{settings.host}:{settings.port}"
    server.add_insecure_port(address)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await server.start()
    logger.info("gRPC gateway on %s -> %s (messages up to %d MiB)", address, settings.url, limit // MIB)
    reporting = asyncio.create_task(report_health(health_servicer, ("", gateway.service_name), settings.url))
    await stopping.wait()
    reporting.cancel()
    await health_servicer.enter_graceful_shutdown()  # NOT_SERVING from now on: probes stop routing here
    # Calls in flight may take a whole request timeout (a video): let them finish.
    logger.info("stopping: no new calls, up to %d s for those in flight", settings.timeout_s)
    await server.stop(grace=settings.timeout_s)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request
    asyncio.run(serve(GatewaySettings.from_env()))


if __name__ == "__main__":
    main()
