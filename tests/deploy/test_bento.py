"""The bento and how it runs as a container: `bentoml build` offline, the Dockerfile it generates,
and docker-compose.yml. There is no Docker engine here: the files are checked, no image is built.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import yaml
from helpers import ROOT

from genserve.core.presets import store_tag
from genserve.core.settings import DEFAULT_TIMEOUT_S

BENTOFILE = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
# Any attempt to reach the network fails at once: a proxy nobody listens on.
OFFLINE = {
    **{name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
    "NO_PROXY": "",
    "no_proxy": "",
    "UV_OFFLINE": "1",
    "PIP_NO_INDEX": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


@pytest.fixture(scope="module")
def bento(tiny_models, demo_models) -> Path:
    """`bentoml build` of bentofile.yaml, offline, into the tests' model store; the bento's folder."""
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [tag] = [line for line in result.stdout.splitlines() if line.startswith("__tag__:")]
    _, name, version = tag.split(":")
    return Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in dockerfile.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


@pytest.fixture(scope="module")
def dockerfile(bento) -> list[tuple[str, str]]:
    return instructions((bento / "env" / "docker" / "Dockerfile").read_text())


def args_of(dockerfile: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile if name == keyword]


@pytest.mark.slow
def test_the_bento_holds_the_services_the_embedded_models_and_the_pins(bento) -> None:
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["entry_service"] == "GenServe"
    services = {service["name"] for service in info["services"]}
    assert services == {"GenServe", "ImageGenerator", "VideoGenerator"}
    # The code: service.py and the whole genserve package.
    code = {path.relative_to(ROOT) for path in [ROOT / "service.py", *(ROOT / "genserve").rglob("*.py")]}
    assert code <= {path.relative_to(bento / "src") for path in (bento / "src").rglob("*.py")}
    # The models the demo and tiny presets load, by the exact versions in the model store.
    embedded = [("image", "demo"), ("video", "demo"), ("image", "tiny"), ("video", "tiny")]
    expected = {str(bentoml.models.get(store_tag(kind, preset)).tag) for kind, preset in embedded}
    assert {model["tag"] for model in info["models"]} == expected
    # The same pins as the venv, unlocked (locking would need the network).
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    pins = [line for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines() if "==" in line]
    assert "torch==2.13.0" in pins
    assert set(pins) <= set(requirements)
    assert not (bento / "env" / "python" / "requirements.lock.txt").exists()


@pytest.mark.slow
def test_the_image_has_a_cuda_base_and_gets_uv_without_pip(dockerfile) -> None:
    # Every stage starts from BASE_IMAGE, by default the CUDA base; the CPU variant
    # (scripts/image_test.py) passes another one.
    assert dockerfile[0] == ("ARG", f"BASE_IMAGE={BENTOFILE['docker']['base_image']}")
    assert BENTOFILE["docker"]["base_image"].startswith("nvidia/cuda:")
    assert args_of(dockerfile, "FROM") == ["${BASE_IMAGE} AS uv", "${BASE_IMAGE} as base-container"]
    # The base has no pip: uv, from PyPI in the first stage, must be on the PATH before
    # BentoML's step that would pip-install it. Nothing comes from another image.
    steps = [f"{name} {arguments}" for name, arguments in dockerfile]
    assert "pip3 install --no-cache-dir --target /opt/uv uv==" in steps[2]
    copy_uv = steps.index("COPY --from=uv /opt/uv/bin/uv /usr/local/bin/")
    install_uv = next(i for i, step in enumerate(steps) if "pip install" in step and "uv" in step)
    assert copy_uv < install_uv
    assert [step for step in steps if "--from=" in step] == [steps[copy_uv]]


@pytest.mark.slow
def test_the_build_can_prefer_local_wheels_and_trust_a_proxy_ca_and_keeps_neither(dockerfile) -> None:
    steps = [f"{name} {arguments}" for name, arguments in dockerfile]
    install = next(i for i, step in enumerate(steps) if step.startswith("RUN") and "install.sh" in step)
    # UV_FIND_LINKS (the CPU variant's torch wheel) is declared, unset by default, before the install.
    assert steps.index("ARG UV_FIND_LINKS") < install
    # Each step that reaches an index (uv from PyPI, Python, the requirements) mounts the
    # optional CA secret; no CA is baked in.
    for step in (steps[2], next(step for step in steps if "uv venv" in step), steps[install]):
        assert step.startswith("RUN --mount=type=secret,id=hostca,required=false ")
        assert "export SSL_CERT_FILE=/run/secrets/hostca" in step
    assert not any("CERT" in arguments for name, arguments in dockerfile if name in ("ENV", "ARG"))


@pytest.mark.slow
def test_the_image_runs_as_the_non_root_user_the_manifests_expect(dockerfile) -> None:
    arguments = dict(arg.split("=", 1) for arg in args_of(dockerfile, "ARG") if "=" in arg)
    user = args_of(dockerfile, "USER")[-1]
    assert user == arguments["BENTO_USER"] != "root"
    uid = int(arguments["BENTO_USER_UID"])
    assert uid != 0
    pod = yaml.safe_load((ROOT / "k8s" / "base" / "generator-pod.yaml").read_text())
    assert pod["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


@pytest.mark.slow
def test_the_image_serves_on_port_3000_and_starts_single_services(bento, dockerfile) -> None:
    assert "3000" in args_of(dockerfile, "EXPOSE")
    [entrypoint] = args_of(dockerfile, "ENTRYPOINT")
    assert "/env/docker/entrypoint.sh" in entrypoint
    # The Kubernetes manifests run `start-http-server --service-name=...` through it.
    assert "start-http-server" in (bento / "env" / "docker" / "entrypoint.sh").read_text()


@pytest.mark.slow
def test_the_image_sets_the_environment_without_secrets(bento, dockerfile) -> None:
    env = dict(arg.split("=", 1) for arg in args_of(dockerfile, "ENV"))
    defaults = dict(arg.split("=", 1) for arg in args_of(dockerfile, "ARG") if "=" in arg)
    for name, value in BENTOFILE["docker"]["env"].items():
        assert (env[name], defaults[name]) == (f"${name}", str(value))
    presets = (defaults["GENSERVE_IMAGE_PRESET"], defaults["GENSERVE_VIDEO_PRESET"])
    assert presets == ("demo", "demo")  # as bundled
    assert "HF_TOKEN" not in (bento / "env" / "docker" / "Dockerfile").read_text()
    # The model cache exists, owned by the bento user, so a fresh volume on it is writable.
    cache = Path(BENTOFILE["docker"]["env"]["HF_HOME"])
    assert any("-o $BENTO_USER" in step and str(cache) in step for step in args_of(dockerfile, "RUN"))


def test_compose_runs_one_gpu_host_without_inlined_secrets() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["genserve"]
    env = dict(item.partition("=")[::2] for item in service["environment"])
    assert env["HF_TOKEN"] == ""  # passed through from the host, never a value here
    assert service["init"] is True  # as scripts/image_test.py runs the image: SIGTERM drains
    assert env["GENSERVE_API_KEYS_FILE"] == f"/run/secrets/{service['secrets'][0]}"
    assert env["GENSERVE_IMAGE_GPUS"] == env["GENSERVE_VIDEO_GPUS"] == "0.5"  # both on the one GPU
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["count"], device["capabilities"]) == ("nvidia", 1, ["gpu"])
    cache = Path(BENTOFILE["docker"]["env"]["HF_HOME"])
    assert any(volume.split(":")[1] in (str(cache), str(cache.parent)) for volume in service["volumes"])
    assert service["read_only"] and "/tmp" in service["tmpfs"]
    assert env["BENTOML_HOME"].startswith("/tmp/")
    minutes = int(service["stop_grace_period"].removesuffix("m"))
    assert minutes * 60 > DEFAULT_TIMEOUT_S


# The job store's password, as compose must take it: from the environment, required, no default.
REDIS_PASSWORD = r"\$\{GENSERVE_REDIS_PASSWORD:\?[^}]+\}"


def test_compose_keeps_jobs_in_redis_with_a_password_from_the_environment() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    api, redis = compose["services"]["genserve"], compose["services"]["redis"]
    env = dict(item.partition("=")[::2] for item in api["environment"])
    assert re.fullmatch(rf"redis://:{REDIS_PASSWORD}@redis:6379/0", env["GENSERVE_JOB_STORE_URL"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    # No password is committed: every mention is the required variable, never a default.
    mentions = re.findall(r"\$\{GENSERVE_REDIS_PASSWORD[^}]*\}", text)
    assert len(mentions) == 2 and all(re.fullmatch(REDIS_PASSWORD, m) for m in mentions)
    redis_env = dict(item.partition("=")[::2] for item in redis["environment"])
    assert re.fullmatch(REDIS_PASSWORD, redis_env["REDISCLI_AUTH"])  # redis-cli (healthcheck) reads it
    [script] = redis["command"][redis["command"].index("-c") + 1 :]
    # $$: the container's shell expands it; a single $ would be compose's, empty: no password at all.
    assert '--requirepass "$$REDISCLI_AUTH"' in script
    # Accepted jobs survive a restart: an append-only file on a named volume.
    assert "--appendonly yes" in script
    data = re.search(r"--dir (\S+)", script)[1]
    [volume] = [v.split(":")[0] for v in redis["volumes"] if v.split(":")[1] == data]
    assert volume in compose["volumes"]
    test = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli ping" in test and "PONG" in test  # redis-cli exits 0 on NOAUTH
    assert redis["user"].split(":")[0] not in ("0", "root") and redis["read_only"] is True
    # The same Redis as the gpu overlay's.
    manifests = yaml.safe_load_all((ROOT / "k8s" / "overlays" / "gpu" / "redis.yaml").read_text())
    [statefulset] = [m for m in manifests if m["kind"] == "StatefulSet"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    assert redis["image"] == container["image"]
