"""The gRPC gateway as its clients meet it: a real gateway process in front of the served API,
called through stubs generated from proto/image_gen.proto, and discovered through reflection."""

from __future__ import annotations

import base64
import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from decoding import read_image, read_video
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from helpers import ENV_KEYS, ROOT, half_mask

from genserve.clients.grpc_gateway import DEFAULT_MAX_MESSAGE_MB, MIB, grpc_error, load_contract
from genserve.core.media import encode_image
from genserve.core.schemas import MAX_SEED
from genserve.serving.processes import free_port, log_tail, start_process, stop_process_tree

TIMEOUT = 120
#: An image to edit (96x64) and an inpainting mask of its size: keep the left half, repaint the right.
STILL = encode_image(np.full((64, 96, 3), (200, 30, 30), np.uint8), "png")
MASK = half_mask(96, 64)
#: What a client must allow itself to receive: the gateway's default limit.
CLIENT_OPTIONS = [("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_MB * MIB)]


@contextmanager
def running_gateway(url: str, log_dir: Path, **env: str) -> Iterator[str]:
    """`python -m genserve.clients.grpc_gateway` in front of `url`, on a free port; yields its address."""
    port = free_port()
    log = log_dir / f"gateway-{port}.log"
    env = {"GENSERVE_URL": url, "GENSERVE_GRPC_HOST": "127.0.0.1", "GENSERVE_GRPC_PORT": str(port), **env}
    process = start_process([sys.executable, "-m", "genserve.clients.grpc_gateway"], log, ROOT, env)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield address
    except Exception:
        print(log_tail(log))
        raise
    finally:
        stop_process_tree(process)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """`image_gen_pb2` and `image_gen_pb2_grpc`, generated from the .proto as a client would."""
    out = tmp_path_factory.mktemp("stubs")
    command = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={ROOT / 'proto'}"]
    command += [f"--python_out={out}", f"--grpc_python_out={out}", "image_gen.proto"]
    subprocess.run(command, check=True)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("image_gen_pb2"), importlib.import_module("image_gen_pb2_grpc")
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory) -> Iterator[str]:
    with running_gateway(server, tmp_path_factory.mktemp("gateway")) as address:
        yield address


@pytest.fixture(scope="module")
def pb(stubs):
    return stubs[0]


@pytest.fixture(scope="module")
def stub(gateway, stubs):
    with grpc.insecure_channel(gateway, options=CLIENT_OPTIONS) as channel:
        yield stubs[1].ImageGeneratorStub(channel)


def png_pixels(reply) -> np.ndarray:
    mime, pixels = read_image(base64.b64decode(reply.image_data, validate=True))
    assert mime == "image/png"
    return pixels


#: Each method's request message.
REQUESTS = {"GenerateImage": "ImageRequest", "EditImage": "EditImageRequest", "GenerateVideo": "VideoRequest"}


def test_the_original_request_gets_a_base64_png_and_its_seed(stub, pb, settings) -> None:
    reply = stub.GenerateImage(pb.ImageRequest(prompt="a cat flying through space"), timeout=TIMEOUT)
    preset = settings.image.preset
    assert png_pixels(reply).shape == (preset.default_height, preset.default_width, 3)
    request = pb.ImageRequest(prompt="a cat flying through space", seed=reply.seed)
    assert stub.GenerateImage(request, timeout=TIMEOUT).image_data == reply.image_data


def test_optional_fields_reach_the_service(stub, pb, server) -> None:
    fields = {"prompt": "a red fox", "negative_prompt": "blur", "width": 128, "height": 64}
    fields |= {"num_inference_steps": 2, "guidance_scale": 3.5, "seed": MAX_SEED}
    reply = stub.GenerateImage(pb.ImageRequest(**fields), timeout=TIMEOUT)
    assert reply.seed == MAX_SEED
    over_http = read_image(httpx.post(f"{server}/txt2img", json=fields, timeout=TIMEOUT).content)[1]
    pixels = png_pixels(reply)
    assert pixels.shape == (64, 128, 3)
    assert np.abs(pixels.astype(int) - over_http.astype(int)).max() <= 1


@pytest.mark.parametrize("endpoint", ["img2img", "inpaint"])
def test_edit_image_without_and_with_a_mask(stub, pb, server, endpoint) -> None:
    """The reply is the service's own answer to the same request: strength and the mask reach it."""
    files = {"image": STILL} | ({"mask": MASK} if endpoint == "inpaint" else {})
    fields = {"prompt": "a blue square", "strength": 0.7, "num_inference_steps": 2, "seed": 9}
    reply = stub.EditImage(pb.EditImageRequest(**files, **fields), timeout=TIMEOUT)
    assert reply.seed == 9
    pixels = png_pixels(reply)
    assert pixels.shape == (64, 96, 3)
    form = {name: str(value) for name, value in fields.items()}
    over_http = httpx.post(f"{server}/{endpoint}", data=form, files=files, timeout=TIMEOUT)
    assert np.abs(pixels.astype(int) - read_image(over_http.content)[1].astype(int)).max() <= 1


@pytest.mark.slow
def test_generate_video_from_an_image_and_from_a_prompt(stub, pb, settings) -> None:
    preset = settings.video.preset
    still = encode_image(np.full((48, 80, 3), (200, 30, 30), np.uint8), "png")
    from_image = pb.VideoRequest(
        image=still, num_frames=3, num_inference_steps=1, seed=2, output_format="gif"
    )
    reply = stub.GenerateVideo(from_image, timeout=TIMEOUT)
    assert (reply.mime_type, reply.seed) == ("image/gif", 2)
    assert read_video(reply.video_data, "gif")[0].shape == (3, preset.height, preset.width, 3)

    from_text = pb.VideoRequest(prompt="a misty forest", num_frames=2, num_inference_steps=1, image_steps=1)
    reply = stub.GenerateVideo(from_text, timeout=TIMEOUT)
    assert reply.mime_type == "video/mp4"
    assert read_video(reply.video_data, "mp4")[0].shape == (2, preset.height, preset.width, 3)


@pytest.mark.parametrize(
    ("method", "fields", "named"),
    [
        ("GenerateImage", {"prompt": "a cat", "width": 100}, "width"),
        ("GenerateImage", {"prompt": "a cat", "num_inference_steps": 0}, "num_inference_steps"),
        ("GenerateImage", {}, "prompt"),
        ("GenerateVideo", {}, "prompt"),
        ("GenerateVideo", {"prompt": "a cat", "num_frames": 1000}, "num_frames"),
        ("GenerateVideo", {"prompt": "a cat", "output_format": "avi"}, "output_format"),
        ("GenerateVideo", {"image": b"not an image"}, "image"),
        ("GenerateVideo", {"image": b"\0" * (5 * MIB)}, "image"),  # over gRPC's usual 4 MiB: it arrives
        ("GenerateVideo", {"image": b"\0" * 64, "negative_prompt": "blur"}, "negative_prompt"),
        ("EditImage", {"image": STILL, "prompt": "a cat", "strength": 0.0}, "strength"),
        ("EditImage", {"image": STILL, "prompt": "a cat", "strength": 1.5}, "strength"),
        ("EditImage", {"image": STILL, "prompt": "a cat", "mask": b"not an image"}, "mask"),
        ("EditImage", {"image": STILL}, "prompt"),
        ("EditImage", {"prompt": "a cat"}, "image"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(stub, pb, method, fields, named) -> None:
    request = getattr(pb, REQUESTS[method])(**fields)
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, method)(request, timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(named)


def test_reflection_describes_the_service_well_enough_to_call_it(gateway) -> None:
    """What grpcurl and Postman do: list services, fetch their descriptors, build and send a request."""
    with grpc.insecure_channel(gateway, options=CLIENT_OPTIONS) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "ImageGenerator" in database.get_services()
        service = descriptor_pool.DescriptorPool(database).FindServiceByName("ImageGenerator")
        method = service.methods_by_name["GenerateImage"]
        assert method.output_type.fields_by_name["image_data"].type == FieldDescriptor.TYPE_STRING
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/ImageGenerator/GenerateImage",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = call(request_class(prompt="a lighthouse", width=80), timeout=TIMEOUT)
    assert png_pixels(reply).shape[1] == 80


def health_of(channel: grpc.Channel, service: str, expected: int) -> int:
    """The health service's answer for `service`, once it is `expected` (the first check of the
    API behind takes a moment) or after 30 s."""
    check = health_pb2_grpc.HealthStub(channel).Check
    deadline = time.monotonic() + 30
    while (status := check(health_pb2.HealthCheckRequest(service=service), timeout=10).status) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return status


def test_health_is_serving_in_front_of_a_ready_api(gateway) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(gateway) as channel:
        assert health_of(channel, "", serving) == serving
        assert health_of(channel, "ImageGenerator", serving) == serving
        assert "grpc.health.v1.Health" in ProtoReflectionDescriptorDatabase(channel).get_services()


@pytest.mark.slow
def test_the_api_key_travels_as_metadata(keyed, stubs, tmp_path) -> None:
    pb, services = stubs
    with (
        running_gateway(keyed[0], tmp_path) as address,
        grpc.insecure_channel(address, options=CLIENT_OPTIONS) as channel,
    ):
        stub = services.ImageGeneratorStub(channel)
        request = pb.ImageRequest(prompt="a cat", seed=1)
        reply = stub.GenerateImage(
            request, metadata=[("authorization", f"Bearer {ENV_KEYS[0]}")], timeout=TIMEOUT
        )
        assert png_pixels(reply).ndim == 3
        for metadata in ([], [("authorization", "Bearer wrong-key")], [("authorization", ENV_KEYS[0])]):
            with pytest.raises(grpc.RpcError) as raised:
                stub.GenerateImage(request, metadata=metadata, timeout=TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unreachable_service_and_the_configured_message_limit(stubs, tmp_path) -> None:
    pb, services = stubs
    nowhere = f"http://127.0.0.1:{free_port()}"
    with (
        running_gateway(nowhere, tmp_path, GENSERVE_GRPC_MAX_MESSAGE_MB="1") as address,
        grpc.insecure_channel(address) as channel,
    ):
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_of(channel, "", not_serving) == not_serving  # probes route no calls here
        stub = services.ImageGeneratorStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GenerateImage(pb.ImageRequest(prompt="a cat"), timeout=TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as raised:
            stub.GenerateVideo(pb.VideoRequest(image=b"\0" * (2 * MIB)), timeout=TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.slow
def test_the_default_message_limit_holds_a_4096_square_png() -> None:
    """Noise does not compress: the largest PNG of that size, as `image_data` in a reply."""
    noise = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    image_data = base64.b64encode(encode_image(noise, "png")).decode("ascii")
    reply_class = message_factory.GetMessageClass(load_contract().message_types_by_name["ImageResponse"])
    size = reply_class(image_data=image_data, seed=MAX_SEED).ByteSize()
    assert 64 * MIB < size <= DEFAULT_MAX_MESSAGE_MB * MIB  # why the default is not the usual 64 MiB


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (401, '{"error": "invalid API key"}', grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key"),
        (429, "", grpc.StatusCode.RESOURCE_EXHAUSTED, "the generators are busy"),
        (503, "", grpc.StatusCode.UNAVAILABLE, "the generators are busy or loading"),
        (504, "", grpc.StatusCode.DEADLINE_EXCEEDED, "generation took longer"),
        (400, '{"error": "x", "detail": [{"loc": ["seed"], "msg": "too big"}]}', None, "seed: too big"),
        (400, 'Error making request: 400: {"detail": [{"loc": ["fps"], "msg": "bad"}]}', None, "fps: bad"),
        (413, '{"error": "request body is larger than 1 bytes"}', None, "request body is larger"),
        (500, "boom", grpc.StatusCode.INTERNAL, "the service answered 500: boom"),
    ],
)
def test_service_errors_map_to_grpc_codes(status, body, code, message) -> None:
    got_code, got_message = grpc_error(status, body)
    assert got_code == (code or grpc.StatusCode.INVALID_ARGUMENT)
    assert got_message.startswith(message)
