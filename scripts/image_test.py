"""`make image-test`: build genserve's container image for the CPU, run it, and generate through it.

A bento that builds is not yet a container that runs. This builds the image with
`bentoml containerize` from the same bento and Dockerfile as the GPU image; only the base image
(Debian bookworm, made here with mmdebstrap: no registry needs to be reachable) and the torch
build (a local CPU wheel instead of PyPI's CUDA build) differ. It runs the image the way
docker-compose.yml does (non-root, read-only root filesystem, /tmp a tmpfs, /cache a volume),
with an init as PID 1, waits for /readyz, makes an image and a video through the published port
and decodes them, starts the gRPC gateway in it as k8s/base/grpc-gateway.yaml does (same image,
working directory and command) and makes an image through that too, stops it with SIGTERM,
builds the web UI's image (frontend/Dockerfile, on the same base) and runs it beside the API:
its health check answers and its own client makes an image, checks that the API exited cleanly
within the grace period, and removes all it made.

Needs root, podman and mmdebstrap (CI installs them with apt-get). Environment:
  BASE_IMAGE     use this base instead of making one (it is then kept)
  TORCH_WHEELS   folder holding the CPU torch wheel (default: /opt/wheels, as on CI)
  BUILD_CA       CA bundle given to the build as the secret `hostca`, for a TLS-intercepting
                 proxy (default: the host's bundle, if any; empty: none)
  DEBIAN_MIRROR  mmdebstrap's mirror (default: http://deb.debian.org/debian)
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import yaml
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from decoding import read_image, read_video  # noqa: E402

from genserve.clients.grpc_gateway import DEFAULT_PORT as GRPC_PORT  # noqa: E402
from genserve.clients.grpc_gateway import SERVICE, load_contract  # noqa: E402
from genserve.core.presets import IMAGE_PRESETS, VIDEO_PRESETS  # noqa: E402
from genserve.core.shapes import read_picture  # noqa: E402
from genserve.serving.processes import demo_import_command, tiny_import_command, wait_until_ready  # noqa: E402

PYTHON = sys.executable
READY_TIMEOUT_S = 300
GATEWAY_MANIFEST = ROOT / "k8s" / "base" / "grpc-gateway.yaml"
# Nothing is in flight when it is stopped, so a clean stop takes seconds; a process that ignores
# SIGTERM is killed at the end of this grace period and exits with 137.
STOP_GRACE_S = 30
UI_PORT = 8501  # frontend/Dockerfile's
# Podman settings this host needs (containers/containers.conf says why), unless CONTAINERS_CONF
# names others. No intermediate images: one commit, and nothing to clean up but the result.
PODMAN_ENV = {
    "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "containers" / "containers.conf")),
    "BUILDAH_LAYERS": "false",
}


class Steps:
    """Runs the test's steps in order and reports how long each took, also when one fails."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"==> {name}", flush=True)
        start = time.monotonic()
        try:
            yield
        finally:
            self.times.append((name, time.monotonic() - start))
            print(f"<== {name}: {self.times[-1][1]:.0f} s", flush=True)

    def report(self) -> None:
        width = max(len(name) for name, _ in self.times)
        print("\nstep timings:")
        for name, seconds in self.times:
            print(f"  {name:<{width}}  {seconds:6.0f} s")
        print(f"  {'total':<{width}}  {sum(s for _, s in self.times):6.0f} s", flush=True)


def run(*command: str, capture: bool = False, check: bool = True, **options) -> str:
    """A command (by default one that must succeed); its output goes to the log unless captured."""
    env = {**os.environ, **PODMAN_ENV, **options.pop("env", {})}
    result = subprocess.run(command, env=env, check=check, text=True, capture_output=capture, **options)
    return result.stdout.strip() if capture else ""


def podman(*arguments: str, capture: bool = False) -> str:
    return run("podman", *arguments, capture=capture)


def make_base(tag: str) -> None:
    """Debian bookworm with its Python 3.11 (which the bento's `uv venv -p 3.11` then uses).

    mmdebstrap rather than debootstrap: it resolves with apt, so it takes half the time, and it
    streams the root filesystem as a tar, straight into `podman import`.
    """
    mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
    command = ["mmdebstrap", "--variant=minbase", "--include=python3", "bookworm", "-", mirror]
    rootfs = subprocess.Popen(command, stdout=subprocess.PIPE)
    run("podman", "import", "-", tag, stdin=rootfs.stdout)
    if rootfs.wait() != 0:
        raise RuntimeError(f"mmdebstrap exited with {rootfs.returncode}")


def build_bento(env: dict[str, str]) -> str:
    """The embedded models into a private model store, as `make models`, then `bentoml build`: the
    bento's tag."""
    for command in (demo_import_command(), tiny_import_command()):
        run(*command, cwd=ROOT, env=env)
    output = run(PYTHON, "-m", "bentoml", "build", "--output", "tag", cwd=ROOT, env=env, capture=True)
    [tag] = [line.removeprefix("__tag__:") for line in output.splitlines() if line.startswith("__tag__:")]
    return tag


def containerize(work: Path, env: dict[str, str], bento: str, base: str, image: str) -> None:
    """`bentoml containerize` with podman: the GPU image's Dockerfile, a CPU base and CPU torch."""
    wheels = Path(os.environ.get("TORCH_WHEELS", "/opt/wheels"))
    if not list(wheels.glob("torch-*+cpu-*.whl")):
        raise FileNotFoundError(f"no CPU torch wheel in {wheels}: set TORCH_WHEELS")
    # The wheels are mounted for the build's RUN steps only: uv prefers them, nothing is copied in.
    options = [
        f"build-arg=BASE_IMAGE={base}",
        f"volume={wheels}:/wheels:ro",
        "build-arg=UV_FIND_LINKS=/wheels",
    ]
    ca = os.environ.get("BUILD_CA", "/etc/ssl/certs/ca-certificates.crt")
    if ca and Path(ca).is_file():
        options.append(f"secret=id=hostca,src={ca}")
    # BentoML 1.4.36+ refuses a dockerfile_template outside the working directory, and it
    # renders the template in a temporary folder (bentoml/BentoML#5566): work in that folder.
    tmp = work / "tmp"
    tmp.mkdir()
    command = [PYTHON, "-m", "bentoml", "containerize", "--backend", "podman", bento, "-t", image]
    run(*command, *(f"--opt={option}" for option in options), cwd=tmp, env={**env, "TMPDIR": str(tmp)})


def start(image: str, name: str) -> str:
    """Run it as docker-compose.yml does, port 3000 (and the gRPC gateway's and the web UI's, for
    later: the UI shares its network) published on free loopback ports: its URL."""
    podman(
        "run", "--detach", "--init", "--name", name, "--publish", "127.0.0.1::3000",
        "--publish", f"127.0.0.1::{GRPC_PORT}", "--publish", f"127.0.0.1::{UI_PORT}",
        "--read-only", "--tmpfs", "/tmp", "--env", "BENTOML_HOME=/tmp/bentoml", "--volume", "/cache",
        image,
    )  # fmt: skip
    return f"http://{podman('port', name, '3000', capture=True)}"


def exit_code(name: str) -> int | None:
    """None while the container runs (as `Popen.poll`), its exit code once it has stopped."""
    state = podman("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name, capture=True)
    running, code = state.split()
    return None if running == "true" else int(code)


#: What the container's demo model is asked to draw; the test reads the colours back.
PROMPT = "a red circle on a blue background"


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def generate(url: str) -> None:
    """An image, then a video of it, through the published port; both decoded and checked."""
    image_preset, video_preset = IMAGE_PRESETS["demo"], VIDEO_PRESETS["demo"]
    with httpx.Client(base_url=url, timeout=600) as client:
        answer = client.post("/txt2img", json={"prompt": PROMPT, "seed": 7})
        expect(answer.status_code == 200, f"txt2img: {answer.status_code} {answer.text[:500]}")
        mime, pixels = read_image(answer.content)
        size = (image_preset.default_height, image_preset.default_width, 3)
        expect((mime, pixels.shape) == ("image/png", size), f"txt2img: {mime} {pixels.shape}")
        expect(answer.headers["x-seed"] == "7", f"txt2img: seed {answer.headers['x-seed']}")
        seen = read_picture(pixels)
        expect((seen.colour, seen.background) == ("red", "blue"), f"txt2img: {PROMPT!r} drew {seen}")
        print(f"txt2img: {mime} {pixels.shape}, {seen.colour} on {seen.background}")

        fields = {"num_frames": "4", "fps": "6", "num_inference_steps": "2", "output_format": "mp4"}
        answer = client.post("/img2vid", files={"image": ("cat.png", answer.content, mime)}, data=fields)
        expect(answer.status_code == 200, f"img2vid: {answer.status_code} {answer.text[:500]}")
        frames, fps = read_video(answer.content, "mp4")
        shape = (4, video_preset.height, video_preset.width, 3)
        expect((frames.shape, fps) == (shape, 6), f"img2vid: {frames.shape} at {fps} fps")
        print(f"img2vid: video/mp4 {frames.shape} at {fps:g} fps, {len(answer.content)} bytes")


def start_grpc_gateway(name: str) -> str:
    """The gRPC gateway in the running container, with the working directory and command of
    k8s/base/grpc-gateway.yaml, calling the API beside it: its published address."""
    [deployment] = [
        doc for doc in yaml.safe_load_all(GATEWAY_MANIFEST.read_text()) if doc["kind"] == "Deployment"
    ]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    podman(
        "exec", "--detach", "--workdir", container["workingDir"], "--env", "GENSERVE_URL=http://127.0.0.1:3000",
        name, *container["command"],
    )  # fmt: skip
    return podman("port", name, str(GRPC_PORT), capture=True)


def generate_over_grpc(address: str) -> None:
    """Once the gateway's health service says SERVING (it follows the API's /readyz), an image
    through GenerateImage of the original project's image_gen.proto, decoded and checked."""
    service = load_contract().services_by_name[SERVICE]
    method = service.methods_by_name["GenerateImage"]
    request, reply = (message_factory.GetMessageClass(t) for t in (method.input_type, method.output_type))
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service=service.full_name)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:  # not listening yet
                pass
            expect(time.monotonic() < deadline, f"the gRPC gateway was not SERVING after {READY_TIMEOUT_S} s")
            time.sleep(1)
        call = channel.unary_unary(
            f"/{service.full_name}/GenerateImage",
            request_serializer=request.SerializeToString,
            response_deserializer=reply.FromString,
        )
        answer = call(request(prompt=PROMPT, seed=7, num_inference_steps=2), timeout=READY_TIMEOUT_S)
    mime, pixels = read_image(base64.b64decode(answer.image_data, validate=True))
    preset = IMAGE_PRESETS["demo"]
    size = (preset.default_height, preset.default_width, 3)
    expect((mime, pixels.shape, answer.seed) == ("image/png", size, 7), f"gRPC: {mime} {pixels.shape}")
    print(f"gRPC GenerateImage: {mime} {pixels.shape}, seed {answer.seed}")


def build_ui_image(work: Path, base: str, image: str) -> None:
    """frontend/Dockerfile on `base`, from a context of only what it copies (not the venv)."""
    context = work / "ui-context"
    for path in ("pyproject.toml", "README.md", "requirements", "genserve", "frontend"):
        source = ROOT / path
        if source.is_dir():
            shutil.copytree(source, context / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, context / path)
    options = ["--build-arg", f"BASE_IMAGE={base}", "-f", "frontend/Dockerfile", "-t", image]
    ca = os.environ.get("BUILD_CA", "/etc/ssl/certs/ca-certificates.crt")
    if ca and Path(ca).is_file():
        options += ["--secret", f"id=hostca,src={ca}"]
    podman("build", *options, str(context))


def start_ui(image: str, name: str, api: str) -> str:
    """The UI image run as a Deployment runs it, on the API container's network (the API at
    127.0.0.1:3000), once its health check answers: its published URL."""
    podman(
        "run", "--detach", "--name", name, "--network", f"container:{api}",
        "--env", "GENSERVE_URL=http://127.0.0.1:3000", image,
    )  # fmt: skip
    url = f"http://{podman('port', api, str(UI_PORT), capture=True)}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=5).text == "ok":
                return url
        except httpx.TransportError:  # not listening yet
            pass
        expect(exit_code(name) is None, f"the UI container exited with {exit_code(name)}")
        expect(time.monotonic() < deadline, f"the UI's /_stcore/health did not answer in {READY_TIMEOUT_S} s")
        time.sleep(1)


def generate_through_ui(name: str) -> None:
    """An image made by the UI's own client inside its container (scripts/ui_generate.py), checked."""
    script = (ROOT / "scripts" / "ui_generate.py").read_text()
    encoded = run("podman", "exec", "-i", name, "python", "-", input=script, capture=True)
    mime, pixels = read_image(base64.b64decode(encoded.splitlines()[-1], validate=True))
    seen = read_picture(pixels)
    expect((seen.colour, seen.background) == ("red", "blue"), f"UI client: {PROMPT!r} drew {seen}")
    print(f"web UI's client: {mime} {pixels.shape}, {seen.colour} on {seen.background}")


def stop(name: str) -> None:
    """SIGTERM (what `docker stop` and Kubernetes send): it must exit 0 before the grace ends."""
    start_s = time.monotonic()
    podman("stop", "--time", str(STOP_GRACE_S), name)
    seconds = time.monotonic() - start_s
    status = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, capture=True)
    expect(status == "exited 0", f"after SIGTERM: {status} (137: killed at the end of the grace period)")
    print(f"stopped by SIGTERM in {seconds:.1f} s (grace {STOP_GRACE_S} s), exit code 0")


def remove(name: str, images: list[str]) -> None:
    """The container, its anonymous volume, and the images made here; quietly, as far as they exist."""
    quiet = {"check": False, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    run("podman", "rm", "--force", "--volumes", name, **quiet)
    if images:
        run("podman", "rmi", "--force", *images, **quiet)


def main() -> None:
    suffix = str(os.getpid())
    name, image = f"genserve-image-test-{suffix}", f"localhost/genserve:cpu-test-{suffix}"
    ui_name, ui_image = f"genserve-ui-test-{suffix}", f"localhost/genserve-ui:test-{suffix}"
    base = os.environ.get("BASE_IMAGE") or f"localhost/genserve-cpu-base:bookworm-{suffix}"
    made = [image, ui_image] if os.environ.get("BASE_IMAGE") else [image, ui_image, base]
    steps = Steps()
    work = Path(tempfile.mkdtemp(prefix="genserve-image-test-"))
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    try:
        if not os.environ.get("BASE_IMAGE"):
            with steps("base image (mmdebstrap bookworm)"):
                make_base(base)
        with steps("bento (demo and tiny models, bentoml build)"):
            bento = build_bento(env)
        with steps(f"image {image}"):
            containerize(work, env, bento, base, image)
        with steps("start the container"):
            url = start(image, name)
        with steps("wait for /readyz"):
            wait_until_ready(url, lambda: exit_code(name), timeout_s=READY_TIMEOUT_S, poll_s=1)
        with steps("generate an image and a video"):
            generate(url)
        with steps("the gRPC gateway in the container, an image through it"):
            generate_over_grpc(start_grpc_gateway(name))
        with steps(f"web UI image {ui_image}"):
            build_ui_image(work, base, ui_image)
        with steps("the web UI beside the API: health, an image through its client"):
            start_ui(ui_image, ui_name, name)
            generate_through_ui(ui_name)
            remove(ui_name, [])  # before the API's stop: it shares the API's network
        with steps("stop with SIGTERM"):
            stop(name)
    except BaseException:
        run("podman", "logs", "--tail", "50", name, check=False)
        run("podman", "logs", "--tail", "50", ui_name, check=False)
        raise
    finally:
        with steps("remove the containers and images"):
            remove(ui_name, [])
            remove(name, made)
            shutil.rmtree(work, ignore_errors=True)
        steps.report()
    print("image test passed")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("image_test.py needs root: mmdebstrap, and podman without user namespaces")
    main()
