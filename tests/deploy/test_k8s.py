"""The Kubernetes manifests: every overlay renders (`kubectl kustomize`), passes strict schema
validation, and keeps the deployment rules (GPUs, probes, resources, security, scaling...)."""

from __future__ import annotations

import ast
import functools
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import PurePosixPath

import kubernetes_validate
import pytest
import yaml
from helpers import ROOT

from genserve.core.settings import Settings
from genserve.serving.processes import free_port

OVERLAYS = ("gpu", "cpu")
# The oldest Kubernetes release still commonly run (managed clusters' extended support) and the
# newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())
GENERATORS = ("genserve-image", "genserve-video")
GATEWAY = "genserve-gateway"
UI = "genserve-ui"
GRPC = "genserve-grpc"
# Startup budget a generator needs: the tiny preset loads in seconds; a first start on a GPU
# downloads SD3.5 Large (about 30 GB) before loading it.
STARTUP_BUDGET_S = {"gpu": 20 * 60, "cpu": 2 * 60}
EXPECTED_PRESETS = {"gpu": ("sd35-large", "svd-xt"), "cpu": ("demo", "demo")}


@functools.cache
def rendered(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the overlays (kubectl kustomize)"
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in rendered(overlay) if obj["kind"] == kind}


def api_deployments(overlay: str) -> dict[str, dict]:
    """The bento's HTTP services (gateway and generators); the front ends are checked on their own."""
    return {name: d for name, d in objects(overlay, "Deployment").items() if name not in (UI, GRPC)}


def pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def containers(deployment: dict) -> Iterator[dict]:
    spec = pod(deployment)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config(overlay: str) -> dict[str, str]:
    [configmap] = objects(overlay, "ConfigMap").values()
    return configmap["data"]


def environment(overlay: str, container: dict) -> dict[str, str]:
    """What a container's settings will be: the shared ConfigMap plus its literal variables."""
    literal = {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}
    return {**config(overlay), **literal}


def volume_for(deployment: dict, container: dict, path: str) -> dict:
    """The volume behind `path` in a container: the deepest mount that holds it."""
    mounts = [m for m in container["volumeMounts"] if PurePosixPath(path).is_relative_to(m["mountPath"])]
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return next(v for v in pod(deployment)["volumes"] if v["name"] == mount["name"])


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label selector semantics (matchLabels and the In operator used here)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def service_names() -> set[str]:
    """The BentoML services defined in service.py (classes decorated with bentoml.service)."""
    tree = ast.parse((ROOT / "service.py").read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef) and any("service" in ast.unparse(d) for d in node.decorator_list)
    }


def arg(container: dict, flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(f"{flag}=")]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_schema_validation(overlay, version) -> None:
    for obj in rendered(overlay):
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_runs_in_its_own_deployment_wired_to_the_others(overlay) -> None:
    deployments = api_deployments(overlay)
    services = objects(overlay, "Service")
    assert set(deployments) == {GATEWAY, *GENERATORS}
    names = {}
    for name, deployment in deployments.items():
        [container] = pod(deployment)["containers"]
        assert container["args"][0] == "start-http-server"
        [names[name]] = arg(container, "--service-name")
    assert sorted(names.values()) == sorted(service_names())
    # The gateway reaches each generator through a Service that selects exactly its pods.
    [gateway] = pod(deployments[GATEWAY])["containers"]
    for depends in arg(gateway, "--depends"):
        target, url = depends.split("=", 1)
        host, port = re.fullmatch(r"http://([\w-]+):(\d+)", url).groups()
        service = services[host]
        [backend] = [
            d
            for d in deployments.values()
            if selects({"matchLabels": service["spec"]["selector"]}, labels(d))
        ]
        assert names[backend["metadata"]["name"]] == target
        [service_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        [container] = pod(backend)["containers"]
        assert service_port["targetPort"] in [p["name"] for p in container["ports"]]
    assert sorted(d.split("=")[0] for d in arg(gateway, "--depends")) == sorted(names[g] for g in GENERATORS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_valid_and_the_presets_fit_the_overlay(overlay) -> None:
    known = set(re.findall(r"GENSERVE_[A-Z_]+[A-Z]", (ROOT / "README.md").read_text()))  # documented
    for deployment in api_deployments(overlay).values():
        for container in containers(deployment):
            env = environment(overlay, container)
            assert {name for name in env if name.startswith("GENSERVE_")} <= known
            settings = Settings.from_env(env)
            presets = (settings.image.preset.name, settings.video.preset.name)
            assert presets == EXPECTED_PRESETS[overlay]


def test_gpu_generators_get_a_gpu_on_gpu_nodes() -> None:
    for name in GENERATORS:
        deployment = objects("gpu", "Deployment")[name]
        spec = pod(deployment)
        [container] = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert spec.get("nodeSelector") or spec.get("affinity", {}).get("nodeAffinity")
        assert any(
            t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" and t["operator"] == "Exists"
            for t in spec["tolerations"]
        )
        assert environment("gpu", container)["GENSERVE_DEVICE"] == "cuda"
    gateway = objects("gpu", "Deployment")[GATEWAY]
    assert "nvidia.com/gpu" not in str(gateway)


def test_cpu_overlay_needs_no_gpu_and_no_shared_storage() -> None:
    text = yaml.safe_dump_all(rendered("cpu"))
    assert "nvidia.com/gpu" not in text
    assert not objects("cpu", "PersistentVolumeClaim")
    assert config("cpu")["GENSERVE_IMAGE_GPUS"] == config("cpu")["GENSERVE_VIDEO_GPUS"] == "0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_tagged_and_from_one_registry(overlay) -> None:
    """An untagged image would be pulled as `latest` from Docker Hub."""
    images = {c["image"] for d in objects(overlay, "Deployment").values() for c in containers(d)}
    assert images and all(":" in image.rsplit("/", 1)[-1] for image in images), images
    assert len({image.rpartition("/")[0] for image in images}) == 1, images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_cover_the_model_load(overlay) -> None:
    for name, deployment in api_deployments(overlay).items():
        [container] = pod(deployment)["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        startup = container["startupProbe"]
        if name in GENERATORS:
            assert startup["httpGet"]["path"] == "/readyz"
            budget = startup["periodSeconds"] * startup["failureThreshold"]
            assert budget >= STARTUP_BUDGET_S[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resource_requests_and_limits(overlay) -> None:
    for deployment in api_deployments(overlay).values():
        for container in containers(deployment):
            resources = container["resources"]
            for key in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[key]), (container["name"], key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_generators_have_shared_memory_a_model_cache_and_time_to_finish_a_video(overlay) -> None:
    timeout_s = int(config(overlay)["GENSERVE_REQUEST_TIMEOUT_S"])
    claims = objects(overlay, "PersistentVolumeClaim")
    for name, deployment in api_deployments(overlay).items():
        assert pod(deployment)["terminationGracePeriodSeconds"] > timeout_s
        if name not in GENERATORS:
            continue
        [container] = pod(deployment)["containers"]
        assert volume_for(deployment, container, "/dev/shm")["emptyDir"]["medium"] == "Memory"
        cache = volume_for(deployment, container, environment(overlay, container)["HF_HOME"])
        if overlay == "gpu":  # downloaded once, kept across restarts and shared by replicas
            assert (
                "ReadWriteMany" in claims[cache["persistentVolumeClaim"]["claimName"]]["spec"]["accessModes"]
            )
        else:  # the embedded models are in the image
            assert "emptyDir" in cache


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_autoscales_and_has_a_disruption_budget(overlay) -> None:
    deployments = api_deployments(overlay)
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa
        for hpa in objects(overlay, "HorizontalPodAutoscaler").values()
    }
    assert set(autoscalers) == set(deployments)
    for name in GENERATORS:
        [metric] = autoscalers[name]["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "genserve_generate_in_progress"
    budgets = objects(overlay, "PodDisruptionBudget").values()
    for deployment in deployments.values():
        [budget] = [b for b in budgets if selects(b["spec"]["selector"], labels(deployment))]
        assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined(overlay) -> None:
    assert not objects(overlay, "Secret")
    deployments = api_deployments(overlay)
    for deployment in deployments.values():
        for container in containers(deployment):
            for var in container.get("env", []):
                if re.search(r"TOKEN|KEY|SECRET|PASSWORD", var["name"]) and not var["name"].endswith("_FILE"):
                    assert "secretKeyRef" in var.get("valueFrom", {}), var
    for name in GENERATORS:
        [container] = pod(deployments[name])["containers"]
        [token] = [var for var in container["env"] if var["name"] == "HF_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"]["optional"] is True  # only gated presets need it
    [gateway] = pod(deployments[GATEWAY])["containers"]
    keys_file = environment(overlay, gateway)["GENSERVE_API_KEYS_FILE"]
    volume = volume_for(deployments[GATEWAY], gateway, keys_file)
    assert volume["secret"]["secretName"] and not volume["secret"].get("optional")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_and_prometheus_reach_the_generators(overlay) -> None:
    policies = objects(overlay, "NetworkPolicy").values()
    deployments = api_deployments(overlay)
    gateway = labels(deployments[GATEWAY])
    # Ingress is denied by default to every pod.
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies)
    for name in GENERATORS:
        applying = [p for p in policies if selects(p["spec"]["podSelector"], labels(deployments[name]))]
        peers = [peer for p in applying for rule in p["spec"].get("ingress", []) for peer in rule["from"]]
        assert peers, "no ingress rule: nothing could reach the generator"
        for peer in peers:
            if "namespaceSelector" in peer:  # the metrics scraper, by namespace and pod
                ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                assert ns == "monitoring" and peer["podSelector"]["matchLabels"]
            else:
                assert selects(peer["podSelector"], gateway)
        assert any("namespaceSelector" not in peer for peer in peers)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_on_a_read_only_root_filesystem(overlay) -> None:
    for deployment in api_deployments(overlay).values():
        spec = pod(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in containers(deployment):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            # Where the server writes (temp files, BentoML's home, the model cache) is a volume.
            env = environment(overlay, container)
            for path in ("/tmp", env["BENTOML_HOME"], env.get("HF_HOME", "/tmp")):
                volume = volume_for(deployment, container, path)
                assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def locked_down_front_end(overlay: str, name: str) -> tuple[dict, dict]:
    """A front end's pod spec and its one container, checked to run as non-root on a read-only root
    filesystem, with resource requests and limits."""
    spec = pod(objects(overlay, "Deployment")[name])
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    return spec, container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_web_ui_is_locked_down_and_reaches_the_gateway_with_a_secret_key(overlay) -> None:
    _, container = locked_down_front_end(overlay, UI)
    assert container["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    env = {var["name"]: var for var in container["env"]}
    assert env["GENSERVE_URL"]["value"] == "http://genserve:3000"
    assert "secretKeyRef" in env["GENSERVE_API_KEY"]["valueFrom"]
    assert "genserve-ui" in objects(overlay, "NetworkPolicy")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_gateway_is_locked_down_and_forwards_to_the_gateway(overlay) -> None:
    spec, container = locked_down_front_end(overlay, GRPC)
    assert container["command"] == ["python", "-m", "genserve.clients.grpc_gateway"]
    assert container["readinessProbe"]["grpc"]["port"] == container["ports"][0]["containerPort"]
    assert environment(overlay, container)["GENSERVE_URL"] == "http://genserve:3000"
    assert spec["terminationGracePeriodSeconds"] > int(config(overlay)["GENSERVE_REQUEST_TIMEOUT_S"])
    assert "genserve-grpc" in objects(overlay, "NetworkPolicy")


REDIS = "genserve-redis"
REDIS_IMAGE = re.compile(r"redis:\d+\.\d+\.\d+(-[a-z0-9.]+)?")  # an official image at an exact release
EXPANDED = re.compile(r"\$\((\w+)\)")  # what the kubelet expands from earlier env entries


def secret_vars(container: dict) -> dict[str, tuple[str, str]]:
    """A container's variables fed from a Secret: name -> (Secret, key)."""
    return {
        var["name"]: (ref["name"], ref["key"])
        for var in container.get("env", [])
        if (ref := var.get("valueFrom", {}).get("secretKeyRef"))
    }


def redis_container() -> tuple[dict, dict]:
    [statefulset] = objects("gpu", "StatefulSet").values()
    [container] = pod(statefulset)["containers"]
    return statefulset, container


def option(container: dict, flag: str) -> str:
    """The value after `flag` in redis-server's arguments."""
    args = container.get("command", []) + container["args"]
    return args[args.index(flag) + 1]


def test_redis_keeps_the_job_store_on_its_own_volume_behind_a_secret_password() -> None:
    statefulset, container = redis_container()
    assert statefulset["metadata"]["name"] == REDIS and statefulset["spec"]["replicas"] == 1
    assert REDIS_IMAGE.fullmatch(container["image"]), container["image"]
    assert container["command"] == ["redis-server"]
    # Accepted jobs survive a restart: an append-only file, on a claim of the pod's own.
    assert option(container, "--appendonly") == "yes"
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == option(container, "--dir")]
    claims = {c["metadata"]["name"]: c["spec"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    claim = claims[mount["name"]]
    assert claim["accessModes"] == ["ReadWriteOnce"] and claim["resources"]["requests"]["storage"]
    # The password only from the Secret: every variable is a secretKeyRef, requirepass expands one.
    fed = secret_vars(container)
    assert fed and len(fed) == len(container["env"])
    [variable] = EXPANDED.fullmatch(option(container, "--requirepass")).groups()
    password = fed[variable]
    # Full memory refuses writes rather than evicting accepted jobs, and stays under the limit.
    assert option(container, "--maxmemory-policy") == "noeviction"
    maxmemory = int(option(container, "--maxmemory").removesuffix("gb")) * 2**30
    assert maxmemory < int(container["resources"]["limits"]["memory"].removesuffix("Gi")) * 2**30
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key])
    # Probes ping as a client would, authenticated (redis-cli reads REDISCLI_AUTH), and count
    # only PONG: redis-cli exits 0 on NOAUTH.
    assert fed["REDISCLI_AUTH"] == password
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert "redis-cli ping" in command and "PONG" in command, (probe, command)
    # Locked down as the other workloads are.
    spec = pod(statefulset)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    assert spec["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def store_clients(overlay: str) -> dict[str, dict]:
    """The Deployments whose container reads GENSERVE_JOB_STORE_URL from the manifest."""
    return {
        name: container
        for name, deployment in objects(overlay, "Deployment").items()
        for container in pod(deployment)["containers"]
        if "GENSERVE_JOB_STORE_URL" in [var["name"] for var in container.get("env", [])]
    }


def test_gpu_gateways_and_generators_share_the_job_store_in_redis() -> None:
    statefulset, redis = redis_container()
    clients = store_clients("gpu")
    generators = {
        name
        for name, deployment in objects("gpu", "Deployment").items()
        if labels(deployment)["app.kubernetes.io/component"].endswith("-generator")
    }
    assert set(clients) == {GATEWAY, *generators} and len(generators) == 2
    for container in clients.values():
        env = [var["name"] for var in container["env"]]
        [url] = [var["value"] for var in container["env"] if var["name"] == "GENSERVE_JOB_STORE_URL"]
        variable, host, port = re.fullmatch(r"redis://:\$\((\w+)\)@([\w-]+):(\d+)/0", url).groups()
        # The password comes from the Redis Secret, through a variable the kubelet has already set.
        assert secret_vars(container)[variable] == secret_vars(redis)["REDIS_PASSWORD"]
        assert env.index(variable) < env.index("GENSERVE_JOB_STORE_URL")
    # The host is a Service in front of exactly the Redis pod, on its port.
    service = objects("gpu", "Service")[host]
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert selects(statefulset["spec"]["selector"], labels(statefulset))
    assert statefulset["spec"]["serviceName"] == host
    [service_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    [redis_port] = [p for p in redis["ports"] if p["name"] == service_port["targetPort"]]
    assert redis_port["containerPort"] == int(port) == 6379
    # Any replica answers any poll: no affinity to a pod.
    assert objects("gpu", "Service")["genserve"]["spec"].get("sessionAffinity", "None") == "None"
    assert objects("gpu", "HorizontalPodAutoscaler")[GATEWAY]["spec"]["maxReplicas"] > 1


def test_only_the_job_stores_clients_reach_redis() -> None:
    statefulset, _ = redis_container()
    policies = objects("gpu", "NetworkPolicy").values()
    deployments = objects("gpu", "Deployment")
    gateway = labels(deployments[GATEWAY])
    applying = [p for p in policies if selects(p["spec"]["podSelector"], labels(statefulset))]
    default_deny = [p for p in applying if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert default_deny
    rules = [rule for p in applying for rule in p["spec"].get("ingress", [])]
    assert rules
    for rule in rules:
        assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
        assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"])  # this namespace
        for peer in rule["from"]:
            assert peer["podSelector"].get("matchLabels")  # not {}: that would be every pod
    admitted = {
        name
        for name, d in deployments.items()
        for rule in rules
        for peer in rule["from"]
        if selects(peer["podSelector"], labels(d))
    }
    assert admitted == set(store_clients("gpu"))
    # Where a policy restricts the gateways' egress, it lets them reach Redis.
    for policy in policies:
        if selects(policy["spec"]["podSelector"], gateway) and "Egress" in policy["spec"].get(
            "policyTypes", []
        ):
            assert any(
                any(selects(peer.get("podSelector", {}), labels(statefulset)) for peer in rule.get("to", []))
                and 6379 in [p["port"] for p in rule.get("ports", [])]
                for rule in policy["spec"].get("egress", [])
            ), policy["metadata"]["name"]


def test_cpu_overlay_keeps_one_gateway_with_the_embedded_job_store() -> None:
    assert not objects("cpu", "StatefulSet")
    assert "redis" not in yaml.safe_dump_all(rendered("cpu")).lower()
    gateway = objects("cpu", "Deployment")[GATEWAY]
    for container in containers(gateway):
        assert "GENSERVE_JOB_STORE_URL" not in environment("cpu", container)
        assert "GENSERVE_JOB_STORE_URL" not in [var["name"] for var in container.get("env", [])]
    # One pod holds every job, so every poll finds its job there.
    assert gateway["spec"]["replicas"] == 1
    assert objects("cpu", "HorizontalPodAutoscaler")[GATEWAY]["spec"]["maxReplicas"] == 1


@pytest.mark.skipif(
    not shutil.which("redis-server"), reason="needs redis-server (Debian: apt install redis-server)"
)
def test_redis_starts_with_the_manifests_arguments_and_keeps_jobs_across_a_restart(tmp_path) -> None:
    """The StatefulSet's command and probes, run as the kubelet would (variables expanded) against
    a local redis-server, on a free port and a temporary directory instead of 6379 and /data."""
    _, container = redis_container()
    password = secrets.token_hex(32)
    env = {**os.environ, **dict.fromkeys(secret_vars(container), password)}
    command = [EXPANDED.sub(lambda m: env[m[1]], a) for a in container["command"] + container["args"]]
    command[command.index("--dir") + 1] = str(tmp_path)
    port = free_port()
    command += ["--port", str(port), "--bind", "127.0.0.1"]
    # The probes' redis-cli, pointed at that port.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-cli").write_text(f'#!/bin/sh\nexec {shutil.which("redis-cli")} -p {port} "$@"\n')
    (bin_dir / "redis-cli").chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"

    def probe(name: str, **extra: str) -> bool:
        result = subprocess.run(container[name]["exec"]["command"], env={**env, **extra}, capture_output=True)
        return result.returncode == 0

    def cli(*args: str, **extra: str) -> str:
        result = subprocess.run(
            ["redis-cli", *args], env={**env, **extra}, capture_output=True, text=True, timeout=10
        )
        return result.stdout.strip()

    servers: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(server)
        deadline = time.monotonic() + 20
        while not probe("startupProbe"):
            assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        return server

    try:
        server = start()
        assert all(probe(name) for name in ("readinessProbe", "livenessProbe"))
        assert not probe("readinessProbe", REDISCLI_AUTH="wrong")  # a refused ping fails the probe
        assert cli("ping", REDISCLI_AUTH="").startswith("NOAUTH")
        assert cli("set", "job", "accepted") == "OK"
        server.terminate()  # SIGTERM, as the kubelet stops a pod
        assert server.wait(timeout=20) == 0
        server = start()
        assert cli("get", "job") == "accepted"
        # A crash too loses nothing acknowledged: the append-only file is written before the reply.
        assert cli("set", "job2", "accepted") == "OK"
        server.kill()
        server.wait()
        start()
        assert (cli("get", "job"), cli("get", "job2")) == ("accepted", "accepted")
    finally:
        for server in servers:
            server.kill()
            server.wait()
