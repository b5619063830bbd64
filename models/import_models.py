"""Put a preset's models into the BentoML model store, where the service and the bento find them.

    python models/import_models.py --image demo --video demo        # committed weights, offline
    python models/import_models.py --image tiny --video tiny        # built locally, offline
    python models/import_models.py --image sd35-large --video svd-xt  # downloaded from the Hub

The demo preset's weights are in the repository (models/demo/, trained by models/train_demo.py);
the tiny preset is built here from seeded random weights. The real presets are downloaded
from the Hugging Face Hub (SD3.5 is gated: accept its licence on the Hub and set HF_TOKEN).
Each lands under `genserve-image-<preset>` / `genserve-video-<preset>`; point the service
at an imported real model with e.g. GENSERVE_IMAGE_MODEL=bentoml:genserve-image-sd35-large.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import bentoml

from genserve.core import tiny
from genserve.core.presets import IMAGE_PRESETS, VIDEO_PRESETS, store_tag

#: The demo preset's trained pipelines, in the diffusers layout: `make demo-model` writes them.
DEMO_DIR = Path(__file__).resolve().parent / "demo"

# Weights in these formats only: the hub repos also hold single-file checkpoints we never load.
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


def _stored_digest(tag: str) -> str | None:
    """The digest of the model under `tag` in the store ("" for a model without one); None if absent."""
    try:
        return bentoml.models.get(tag).info.metadata.get("digest", "")
    except bentoml.exceptions.NotFound:
        return None


def _digest(folder: Path) -> str:
    """A hash of every file under `folder`, names included: a retrained demo model differs."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _build_tiny(kind: str, target: Path) -> None:
    builder = tiny.build_image_pipeline if kind == "image" else tiny.build_video_pipeline
    builder().save_pretrained(target)


def _copy_demo(kind: str, target: Path) -> None:
    source = DEMO_DIR / kind
    if not (source / "model_index.json").is_file():
        sys.exit(f"the demo {kind} model is missing from {source}: train it with `make demo-model`")
    shutil.copytree(source, target, dirs_exist_ok=True)


def _download(repo_id: str, variant: str | None, target: Path) -> None:
    """Download a diffusers repo with a progress bar; fail with a message a person can act on."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = HUB_PATTERNS
    if variant:  # only the variant's weights (e.g. fp16): half the download
        patterns = ["*.json", "*.txt", "*.model", f"*.{variant}.safetensors"]
    try:
        snapshot_download(repo_id, local_dir=target, allow_patterns=patterns)
    except GatedRepoError:
        sys.exit(
            f"{repo_id} is gated: accept its licence on huggingface.co and set HF_TOKEN to a token "
            "of that account"
        )
    except RepositoryNotFoundError:
        sys.exit(f"{repo_id} was not found on the Hub (or HF_TOKEN may not read it)")
    except LocalEntryNotFoundError:
        sys.exit(
            f"cannot download {repo_id}: no network connection to the Hugging Face Hub "
            "(or HF_HUB_OFFLINE is set). The tiny preset needs no network."
        )


def import_model(kind: str, preset_name: str, force: bool = False) -> str:
    """Import one model into the store; return its tag. Skips what is there unless forced."""
    presets = IMAGE_PRESETS if kind == "image" else VIDEO_PRESETS
    preset = presets[preset_name]
    tag = store_tag(kind, preset_name)
    # The demo weights may be retrained: a new digest imports them as the tag's latest version.
    digest = _digest(DEMO_DIR / kind) if preset_name == "demo" else ""
    if _stored_digest(tag) == digest and not force:
        print(f"{tag}: already in the model store")
        return tag
    with bentoml.models.create(
        tag,
        labels={"genserve.kind": kind, "genserve.preset": preset_name},
        metadata={"source": preset.source, "digest": digest},
    ) as model:
        target = Path(model.path)
        if preset_name == "tiny":
            _build_tiny(kind, target)
        elif preset_name == "demo":
            _copy_demo(kind, target)
        else:
            _download(preset.source, getattr(preset, "variant", None), target)
    print(f"{model.tag}: imported")
    return tag


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", choices=sorted(IMAGE_PRESETS), help="image preset to import")
    parser.add_argument("--video", choices=sorted(VIDEO_PRESETS), help="video preset to import")
    parser.add_argument("--force", action="store_true", help="import again even if present")
    args = parser.parse_args(argv)
    if not args.image and not args.video:
        parser.error("name at least one of --image and --video")
    if args.image:
        import_model("image", args.image, args.force)
    if args.video:
        import_model("video", args.video, args.force)


if __name__ == "__main__":
    main()
