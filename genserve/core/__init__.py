"""The models' side: presets and request shapes, loading and generation, media, the embedded
models. torch and diffusers are imported here, but only by the modules that need them: clients
import `protocol`, `presets`, `schemas` and `shapes` without them."""
