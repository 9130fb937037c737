"""Admin actions a running node performs on request (POST /v1/admin/<name>): one explicit table,
``ACTIONS``, name -> ``Action(function, body fields)``. The functions are plain functions of the
modules that own them; the node carries this table (``node.actions``) and the admin endpoint
(ops/api/admin.py) reads it there."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledgerlog.engine.errors import BadRequest
from ledgerlog.ops.api.admin import Action
from ledgerlog.ops.api.faucet import (
    faucet_import_key_action,
    faucet_pause_action,
    faucet_resume_action,
    faucet_rotate_key_action,
    faucet_topup_action,
)
from ledgerlog.ops.api.limits import pause_action, resume_action
from ledgerlog.ops.data.prune import prune_action
from ledgerlog.ops.data.snapshot import snapshot_action
from ledgerlog.ops.data.snapshot_prune import snapshot_prune_action
from ledgerlog.ops.data.storage import compact_action
from ledgerlog.ops.node.keyrotation import rotate_key_action
from ledgerlog.streams import catalog
from ledgerlog.streams.reproject import total_records

if TYPE_CHECKING:
    from ledgerlog.ops.node.lifecycle import Node

__all__ = ["ACTIONS", "reproject_action"]


def reproject_action(node: Node, body: dict[str, Any]) -> Any:
    """Rebuild projections beside the live ones while the node keeps serving; swap when caught up.
    409 REPROJECT_RUNNING while another reproject of the node's projections runs. Its progress
    (events folded of the log's records) shows as job ``job`` (or a new id) in GET /v1/status."""
    names = body.get("names") or None
    pdir = node.config.projections_dir
    if names is not None:  # the node's projections, or user projections registered since it started
        have = catalog.names(pdir)
        unknown = [n for n in names if not isinstance(n, str) or n not in have]
        if unknown:
            raise BadRequest(f"names must be projections of this node ({', '.join(sorted(have))}); "
                             f"unknown: {', '.join(str(n)[:40] for n in unknown[:5])}")
    keep = body.get("keep")
    total = total_records(node.chain.log, names or list(node.runner.handles), pdir)
    with node.jobs.run("reproject", body.get("job"), total=total, unit="events") as job:
        return {"projections": node.reproject(names, keep=True if keep is None else keep, progress=job)}


ACTIONS: dict[str, Action] = {
    "reproject": Action(reproject_action, {"names": list, "keep": bool, "job": str}),
    "snapshot": Action(snapshot_action, {"out": str, "with_keys": bool, "link": bool, "job": str}),
    "snapshot-prune": Action(snapshot_prune_action, {"keep": int, "older_than": str, "dry_run": bool, "dir": str}),
    "prune": Action(prune_action, {"before_height": int, "archive": str, "job": str}),
    "compact": Action(compact_action),
    "pause": Action(pause_action),
    "resume": Action(resume_action),
    "faucet-pause": Action(faucet_pause_action),
    "faucet-resume": Action(faucet_resume_action),
    "faucet-topup": Action(faucet_topup_action, {"amount": int}),
    "faucet-import-key": Action(faucet_import_key_action, {"seed": str}, secret=frozenset({"seed"})),
    "faucet-rotate-key": Action(faucet_rotate_key_action),
    "rotate-key": Action(rotate_key_action, {"key": str}),
}
