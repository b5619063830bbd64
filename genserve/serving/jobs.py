"""Background jobs (BentoML tasks) that outlive the process running them.

BentoML keeps task results in an SQLite file and runs each task inside the entry service's
worker. If that worker dies mid-job (killed, out of memory), its jobs would stay
"in_progress" for ever. At start-up the entry service marks them failed, with a reason a
client can act on, so an accepted job is never silently dropped. This assumes one entry
worker per task store (genserve's default: one per pod / per BENTOML_HOME).
"""

from __future__ import annotations

import logging

from genserve.serving import bentoml_compat
from genserve.serving.http import error_response

logger = logging.getLogger(__name__)

ORPHANED = "the server restarted while this job was running; submit it again"


async def fail_orphaned_jobs() -> int:
    """Mark every job still in progress in this process's task store as failed; return how many."""
    async with bentoml_compat.task_store() as store:
        orphans = await bentoml_compat.tasks_in_progress(store)
        for task_id in orphans:
            await bentoml_compat.fail_task(store, task_id, error_response(503, ORPHANED))
    if orphans:
        logger.warning("marked %d interrupted job(s) as failed", len(orphans))
    return len(orphans)
