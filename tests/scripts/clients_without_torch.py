"""Import every client (the CLI, the gRPC gateway, the web UI's page) with torch, diffusers,
transformers and imageio_ffmpeg unimportable, as in the UI's image: run by tests/unit/test_clients.py.

    python tests/scripts/clients_without_torch.py UI_APP_PATH
"""

import importlib
import sys

from streamlit.testing.v1 import AppTest

HEAVY = ("torch", "diffusers", "transformers", "imageio_ffmpeg")


class Unimportable:
    """A meta path finder that refuses the heavy packages, whether installed or not."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {name!r} (made unimportable)", name=name)


def main(app: str) -> None:
    sys.meta_path.insert(0, Unimportable())
    for module in ("genserve.clients.cli", "genserve.clients.grpc_gateway", "genserve.clients.ui"):
        importlib.import_module(module)
    page = AppTest.from_file(app, default_timeout=60).run()  # its API is not running: an error shown
    assert not page.exception, [exception.value for exception in page.exception]
    assert page.error, "the page should say that it cannot reach the API"
    loaded = sorted(name for name in sys.modules if name.partition(".")[0] in HEAVY)
    assert not loaded, loaded
    print("clients imported without", ", ".join(HEAVY))


if __name__ == "__main__":
    main(sys.argv[1])
