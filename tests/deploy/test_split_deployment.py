"""Each service of the bento in a process of its own, started as the Kubernetes manifests start it.

`start-http-server --service-name=X` (what the container's entrypoint runs for those
arguments) serves one service of service.py; the gateway's `--depends=Name=url` points it at
the generators. Here the three run on 127.0.0.1, each with its own BentoML home (so its own
metrics), and requests go through the gateway end to end.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from decoding import read_image, read_video
from helpers import ROOT, genserve_metric, wait_ready

from genserve.core.loading import resolve_source
from genserve.serving.processes import free_port, start_process, stop_process_tree

BASE = ROOT / "k8s" / "base"
MANIFESTS = {"gateway": "gateway.yaml", "image": "image-generator.yaml", "video": "video-generator.yaml"}
TIMEOUT = 120


def deployment(manifest: str) -> dict:
    """The Deployment in one of the base's manifests (the Services beside it are not needed)."""
    documents = yaml.safe_load_all((BASE / manifest).read_text())
    return next(doc for doc in documents if doc["kind"] == "Deployment")


def local_args(manifest: dict, ports: dict[str, int]) -> list[str]:
    """The container's arguments, with the generators' Service URLs turned into local ones."""
    [container] = manifest["spec"]["template"]["spec"]["containers"]

    def local(match: re.Match) -> str:
        return f"http://127.0.0.1:{ports[match['host']]}"

    return [re.sub(r"http://(?P<host>[\w-]+):3000", local, arg) for arg in container["args"]]


@pytest.mark.slow
def test_gateway_and_generators_as_separate_processes(settings, tmp_path: Path) -> None:
    manifests = {role: deployment(name) for role, name in MANIFESTS.items()}
    ports = {manifest["metadata"]["name"]: free_port() for manifest in manifests.values()}
    models = {
        "GENSERVE_IMAGE_MODEL": resolve_source(settings.image.source),
        "GENSERVE_VIDEO_MODEL": resolve_source(settings.video.source),
    }
    processes: dict[str, subprocess.Popen] = {}
    urls = {}
    try:
        for role, manifest in manifests.items():
            port = ports[manifest["metadata"]["name"]]
            # As the container's entrypoint runs it: `start-http-server ARGS... BENTO`.
            command = [sys.executable, "-m", "bentoml_cli._internal.start", *local_args(manifest, ports)]
            command += ["--host", "127.0.0.1", "--port", str(port), "service.py"]
            home = tmp_path / role
            env = {**models, "BENTOML_HOME": str(home)}
            processes[role] = start_process(command, tmp_path / f"{role}.log", ROOT, env)
            urls[role] = f"http://127.0.0.1:{port}"
        for role, url in urls.items():
            wait_ready(url, processes[role])  # the gateway's /readyz also asks both generators

        gateway = urls["gateway"]
        image = httpx.post(f"{gateway}/txt2img", json={"prompt": "a red cat", "seed": 3}, timeout=TIMEOUT)
        assert image.status_code == 200, image.text
        mime, pixels = read_image(image.content)
        preset = settings.image.preset
        assert (mime, pixels.shape) == ("image/png", (preset.default_height, preset.default_width, 3))

        form = {"num_frames": "4", "seed": "3", "output_format": "mp4"}
        files = {"image": ("cat.png", image.content, "image/png")}
        video = httpx.post(f"{gateway}/img2vid", data=form, files=files, timeout=TIMEOUT)
        assert video.status_code == 200, video.text
        frames, _ = read_video(video.content, "mp4")
        assert frames.shape == (4, settings.video.preset.height, settings.video.preset.width, 3)

        # Each generator did its own kind of work; the gateway generated nothing itself.
        counts = {
            role: (
                genserve_metric(url, "genserve_generated_total", "image"),
                genserve_metric(url, "genserve_generated_total", "video"),
            )
            for role, url in urls.items()
        }
        assert counts == {"gateway": (0, 0), "image": (1, 0), "video": (0, 1)}
    except Exception:
        for role in processes:
            print(f"--- {role} ---\n{(tmp_path / f'{role}.log').read_text()[-3000:]}")
        raise
    finally:
        for process in processes.values():
            process.terminate()  # all at once: each takes a while to shut down
        for process in processes.values():
            stop_process_tree(process)
