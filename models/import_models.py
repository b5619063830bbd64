"""Put a preset's models into the BentoML model store, where the service and the bento find them.

    python models/import_models.py --image tiny --video tiny        # built locally, offline
    python models/import_models.py --image sd35-large --video svd-xt  # downloaded from the Hub

The tiny preset is built here from seeded random weights. The real presets are downloaded
from the Hugging Face Hub (SD3.5 is gated: accept its licence on the Hub and set HF_TOKEN).
Each lands under `genserve-image-<preset>` / `genserve-video-<preset>`; point the service
at an imported real model with e.g. GENSERVE_IMAGE_MODEL=bentoml:genserve-image-sd35-large.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bentoml

from genserve import tiny
from genserve.presets import IMAGE_PRESETS, VIDEO_PRESETS, store_tag

# Weights in these formats only: the hub repos also hold single-file checkpoints we never load.
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


def _in_store(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True


def _build_tiny(kind: str, target: Path) -> None:
    builder = tiny.build_image_pipeline if kind == "image" else tiny.build_video_pipeline
    builder().save_pretrained(target)


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
    if _in_store(tag) and not force:
        print(f"{tag}: already in the model store")
        return tag
    with bentoml.models.create(
        tag,
        labels={"genserve.kind": kind, "genserve.preset": preset_name},
        metadata={"source": preset.source},
    ) as model:
        target = Path(model.path)
        if preset_name == "tiny":
            _build_tiny(kind, target)
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
