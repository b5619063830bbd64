"""Background jobs (BentoML tasks) that outlive the process running them.

BentoML keeps task results in an SQLite file and runs each task inside the entry service's
worker. If that worker dies mid-job (killed, out of memory), its jobs would stay
"in_progress" for ever. At start-up the entry service marks them failed, with a reason a
client can act on, so an accepted job is never silently dropped. This assumes one entry
worker per task store (genserve's default: one per pod / per BENTOML_HOME).
"""

from __future__ import annotations

import logging

from _bentoml_impl.tasks import Sqlite3Store  # BentoML's own store, so rows stay in its format
from _bentoml_impl.tasks.result import ResultStatus
from bentoml._internal.configuration.containers import BentoMLContainer

from genserve.serving.http import error_response

logger = logging.getLogger(__name__)

ORPHANED = "the server restarted while this job was running; submit it again"


async def fail_orphaned_jobs() -> int:
    """Mark every job still in progress in this process's task store as failed; return how many."""
    path = BentoMLContainer.result_store_file.get()
    Sqlite3Store.init_db(path)
    async with Sqlite3Store(path) as store:
        cursor = await store._conn.execute(
            "SELECT task_id FROM result WHERE status = ?", (ResultStatus.IN_PROGRESS.value,)
        )
        orphans = [task_id for (task_id,) in await cursor.fetchall()]
        for task_id in orphans:
            await store.set_result(task_id, error_response(503, ORPHANED), ResultStatus.FAILED)
    if orphans:
        logger.warning("marked %d interrupted job(s) as failed", len(orphans))
    return len(orphans)
