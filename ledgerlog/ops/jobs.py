"""Progress of long jobs: what a job reports to (``Progress``: a terminal's bar in the CLI, a
``Job`` on a running node) and the node's record of its jobs (``Jobs``), which ``GET /v1/status``
shows as ``jobs`` so a CLI waiting on an admin action can draw the node's progress."""
from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from ledgerlog.engine.errors import BadRequest

__all__ = ["Job", "Jobs", "Progress", "JOB_ID"]

JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FINISHED_KEPT = 16  # finished jobs a node keeps showing (the CLI reads a job's final figures)


class Progress(Protocol):
    """What a long job reports to; callers hold ``Progress | None`` (None: nobody watches)."""

    def __call__(self, n: int, /) -> None:
        """``n`` more units done."""

    def set_total(self, total: int | None) -> None:
        """The units the whole job takes, once known (None: unknown)."""

    def describe(self, phase: str) -> None:
        """The step the job is at now (e.g. ``log``, ``replay``)."""


class Job:
    """One job's figures, updated by the thread doing it and read by others (a ``Progress``)."""

    def __init__(self, job_id: str, action: str, total: int | None = None, unit: str = "records") -> None:
        self.id, self.action, self.unit = job_id, action, unit
        self._lock = threading.Lock()
        self._done, self._total, self._phase = 0, total, ""
        self._state, self._started = "running", time.time()
        self._finished: float | None = None

    def __call__(self, n: int, /) -> None:
        with self._lock:
            self._done += n

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self._total = total

    def describe(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def finish(self, state: str) -> None:
        with self._lock:
            self._state, self._finished = state, time.time()

    def to_dict(self) -> dict[str, Any]:
        """``{"action","state","done","total","unit","phase","started_ms","finished_ms"}``;
        a finished job's total is at least what it did (a reproject folds what arrived meanwhile)."""
        with self._lock:
            total = self._total
            if total is not None and self._state == "done":
                total = max(total, self._done)
            return {"action": self.action, "state": self._state, "done": self._done, "total": total,
                    "unit": self.unit, "phase": self._phase, "started_ms": int(self._started * 1000),
                    "finished_ms": None if self._finished is None else int(self._finished * 1000)}


class Jobs:
    """A node's running jobs and the last few finished ones, by id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._seq = 0

    @contextlib.contextmanager
    def run(self, action: str, job_id: str | None = None, *, total: int | None = None,
            unit: str = "records") -> Iterator[Job]:
        """Record a job of ``action`` while the block runs (id ``job_id``, the client's choice,
        else a new one); it stays listed, ``done`` or ``failed``, among the last finished."""
        with self._lock:
            if job_id is None:
                while job_id is None or job_id in self._jobs:  # (a client may have chosen one like ours)
                    self._seq += 1
                    job_id = f"{action}-{self._seq}"
            elif not JOB_ID.fullmatch(job_id):
                raise BadRequest(f"job must match {JOB_ID.pattern}")
            elif job_id in self._jobs:
                raise BadRequest(f"job {job_id} exists already; name each job afresh")
            job = self._jobs[job_id] = Job(job_id, action, total, unit)
        try:
            yield job
        except BaseException:
            job.finish("failed")
            raise
        else:
            job.finish("done")
        finally:
            self._trim()

    def _trim(self) -> None:
        with self._lock:
            finished = [k for k, j in self._jobs.items() if j.to_dict()["state"] != "running"]
            for k in finished[:max(0, len(finished) - _FINISHED_KEPT)]:
                del self._jobs[k]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """id -> the job's figures (``Job.to_dict``), oldest first."""
        with self._lock:
            jobs = list(self._jobs.items())
        return {k: j.to_dict() for k, j in jobs}
