"""Every use of BentoML's private code, in one room.

genserve works around BentoML behaviours that no setting changes; each workaround below says why
in a line and names its upstream issue (bench/README.md and docs/ tell how they were found).
The names it touches are BentoML's to change, so:

- the rest of genserve reaches them only through this module;
- `check_bentoml_version` refuses to start on a BentoML genserve was not tested with
  (GENSERVE_ALLOW_UNTESTED_BENTOML=1 starts anyway, at the operator's risk);
- tests/unit/test_bentoml_compat.py checks that every name in `PRIVATE_NAMES` still exists.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import bentoml
from bentoml._internal.marshal import dispatcher
from bentoml._internal.server.http import traffic

logger = logging.getLogger(__name__)

#: The BentoML releases genserve's workarounds were tested with (requirements/runtime.txt pins one).
TESTED_BENTOML = ("1.4.40",)

#: The private names used here and by the classes built on them: module, then attribute path.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("bentoml._internal.marshal.dispatcher", "CorkDispatcher.outbound_call"),
    ("bentoml._internal.marshal.dispatcher", "CorkDispatcher.TICKET_INTERVAL"),
    ("bentoml._internal.marshal.dispatcher", "Optimizer.trigger_refresh"),
    ("bentoml._internal.marshal.dispatcher", "Optimizer.log_outbound"),
    ("bentoml._internal.marshal.dispatcher", "Job"),
    ("_bentoml_impl.server.app", "CorkDispatcher"),
    ("bentoml._internal.server.http.traffic", "TimeoutMiddleware"),
    ("_bentoml_impl.client.proxy2", "SessionManager._make_client"),
)
#: Attributes only instances have, by class: the test builds one of each.
PRIVATE_INSTANCE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "CorkDispatcher": ("_sema", "_queue", "callback", "max_latency", "optimizer"),
    "Optimizer": ("wait",),
    "Job": ("data", "future"),
    "SessionManager": ("_session",),
    "ClientSession": ("connector._keepalive_timeout",),  # aiohttp's
    "APIMethod": ("output_spec",),
}


def check_bentoml_version(allow_untested: bool) -> None:
    """Refuse to serve on a BentoML release whose private code genserve was not tested against."""
    installed = bentoml.__version__
    if installed in TESTED_BENTOML:
        return
    advice = (
        f"genserve was tested with BentoML {', '.join(TESTED_BENTOML)}, not {installed}: its workarounds "
        "of BentoML's private code (genserve/serving/bentoml_compat.py) may fail."
    )
    if allow_untested:
        logger.warning("%s Starting anyway (GENSERVE_ALLOW_UNTESTED_BENTOML).", advice)
        return
    raise RuntimeError(
        f"{advice} Install bentoml=={TESTED_BENTOML[-1]} (requirements/runtime.txt), or set "
        "GENSERVE_ALLOW_UNTESTED_BENTOML=1 to start anyway, at your own risk."
    )


# Greedy batching (serving/batching.py): the dispatcher holds lone requests back for a learned
# wait and answers a batch before the next one starts; no setting changes either. Not reported
# upstream (none could be filed from here); related: bentoml/BentoML#3664.
CorkDispatcher = dispatcher.CorkDispatcher
Optimizer = dispatcher.Optimizer
Job = dispatcher.Job


def install_dispatcher(cls: type[dispatcher.CorkDispatcher]) -> None:
    """Make BentoML's service app build `cls` for batchable methods. The app takes the class from
    the dispatcher module when a worker first imports it (after service.py); an app imported
    earlier is patched as it is. Not imported here: `bentoml serve`'s own process never needs it."""
    dispatcher.CorkDispatcher = cls
    service_app = sys.modules.get("_bentoml_impl.server.app")
    if service_app is not None:
        service_app.CorkDispatcher = cls


# The request timeout (serving/timeout.py): BentoML's middleware keeps every request in memory
# until its timer fires (bentoml/BentoML#4760).
TimeoutMiddleware = traffic.TimeoutMiddleware


def install_timeout_middleware(cls: type[traffic.TimeoutMiddleware]) -> None:
    """BentoML's app factory imports the middleware from its module each time it builds an app
    (`BaseAppFactory.middlewares`), after service.py: replacing it there is enough."""
    traffic.TimeoutMiddleware = cls


# Connections to the generators (serving/dispatch.py): the client keeps idle connections longer
# than the generator does (bentoml/BentoML#4971); there is no setting for its sessions' connector,
# and aiohttp's connector has no setter for its keep-alive.
def set_keepalive(client: Any, seconds: float) -> None:
    """How long the aiohttp sessions of a dependency client (`bentoml.depends`), its current one
    and every later one, keep an idle connection; nothing for a client without sessions (local)."""
    manager = getattr(client.to_async, "_session_manager", None)
    if manager is None or getattr(manager, "genserve_keepalive_s", None) == seconds:
        return

    def tuned(session: Any) -> Any:
        session.connector._keepalive_timeout = seconds
        return session

    if manager._session is not None:
        tuned(manager._session)
    make_session = manager._make_client
    manager._make_client = lambda: tuned(make_session())
    manager.genserve_keepalive_s = seconds


# A generator's answers (serving/workers.py): BentoML works out an answer's media type from its
# JSON schema, rebuilt for every answer (~1 ms of the generator's event loop); not reported upstream.
def set_answer_media_type(service: Any, method: str, media_type: str) -> None:
    service.apis[method].output_spec.media_type = media_type
