"""Admin actions a running node performs on request (POST /v1/admin/<name>)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledgerlog.engine.errors import ReprojectRunningError

from ledgerlog.ops.data import snapshot  # noqa: F401  (registers the "snapshot" admin action)
from ledgerlog.ops.api import faucet  # noqa: F401  (register faucet-*, pause and resume)
from ledgerlog.ops.api import limits
from ledgerlog.ops.data import storage  # noqa: F401  (registers the "compact" action)
from ledgerlog.ops.node import keyrotation  # noqa: F401  (registers "rotate-key")
from ledgerlog.ops.api.admin import action
from ledgerlog.ops.api.limits import error
from ledgerlog.ops.query.queries import bad_request

if TYPE_CHECKING:
    from ledgerlog.ops.node.lifecycle import Node

__all__ = ["reproject_action"]


@action("reproject", fields={"names": list, "keep": bool})
def reproject_action(node: "Node", body: dict[str, Any]) -> Any:
    """Rebuild projections beside the live ones while the node keeps serving; swap when caught up.
    409 REPROJECT_RUNNING while another reproject of the node's projections runs."""
    names = body.get("names") or None
    if names is not None:
        unknown = [n for n in names if not isinstance(n, str) or n not in node.runner.handles]
        if unknown:
            raise bad_request(f"names must be projections of this node ({', '.join(sorted(node.runner.handles))}); "
                              f"unknown: {', '.join(str(n)[:40] for n in unknown[:5])}")
    keep = body.get("keep")
    try:
        return {"projections": node.reproject(names, keep=True if keep is None else keep)}
    except ReprojectRunningError as exc:
        return error(409, exc.code, str(exc))
