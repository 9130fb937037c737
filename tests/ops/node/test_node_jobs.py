"""Long admin actions report progress as jobs in GET /v1/status (what the CLI polls to draw a bar
while it waits on a node): the figures a reproject or snapshot ends on, bad or reused job ids
refused before anything runs, failures marked, and only the last few finished jobs kept."""
from __future__ import annotations

import pytest
from nodetools import ingest_all, observed_node

from ledgerlog.engine.errors import BadRequest
from ledgerlog.ops.jobs import Jobs
from ledgerlog.streams.reproject import total_records

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _jobs(client) -> dict:
    r = client.get("/v1/status")
    assert r.status_code == 200, r.text
    return r.json()["jobs"]


def test_reproject_and_snapshot_show_their_progress_as_named_jobs(tmp_path):
    with observed_node(tmp_path, admin_token=TOKEN) as env:
        client, node = env["client"], env["node"]
        ingest_all(client, env["lines"])
        assert _jobs(client) == {}
        r = client.post("/v1/admin/reproject", json={"names": ["balances"], "job": "r-1"}, headers=AUTH)
        assert r.status_code == 200, r.text
        job = _jobs(client)["r-1"]
        expected = total_records(node.chain.log, ["balances"])  # nothing appended meanwhile
        assert {k: job[k] for k in ("action", "state", "done", "total", "unit")} == \
            {"action": "reproject", "state": "done", "done": expected, "total": expected, "unit": "events"}
        assert expected == r.json()["projections"][0]["events"] > 0
        assert job["finished_ms"] >= job["started_ms"]

        r = client.post("/v1/admin/snapshot", json={"job": "s-1"}, headers=AUTH)
        assert r.status_code == 200, r.text
        job = _jobs(client)["s-1"]
        assert (job["action"], job["state"], job["unit"], job["phase"]) == ("snapshot", "done", "B", "hash")
        size = r.json()["size"]  # every byte hashed, and the linked ones copied first
        assert size <= job["done"] == job["total"] <= 2 * size

        # no id: one is given (another projection: a second rebuild of one within a second races
        # the first's retiring of its old store, streams/reproject.py _retire)
        r = client.post("/v1/admin/reproject", json={"names": ["payouts"]}, headers=AUTH)
        assert r.status_code == 200 and [j["action"] for j in _jobs(client).values()].count("reproject") == 2


@pytest.mark.parametrize("job", ["r-1", "has space", "x" * 65, "../etc"])
def test_a_bad_or_reused_job_id_is_refused_before_anything_runs(tmp_path, job):
    with observed_node(tmp_path, admin_token=TOKEN) as env:
        client = env["client"]
        assert client.post("/v1/admin/reproject", json={"names": ["balances"], "job": "r-1"},
                           headers=AUTH).status_code == 200
        before = _jobs(client)
        r = client.post("/v1/admin/reproject", json={"names": ["balances"], "job": job}, headers=AUTH)
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST", r.text
        assert _jobs(client) == before
        r = client.post("/v1/admin/reproject", json={"job": 7}, headers=AUTH)
        assert r.status_code == 400 and "job must be a string" in r.text


def test_jobs_mark_failures_and_keep_the_last_finished_ones():
    jobs = Jobs()
    with pytest.raises(RuntimeError), jobs.run("reproject", "boom", total=10) as job:
        job(3)
        raise RuntimeError("disk on fire")
    assert {k: jobs.to_dict()["boom"][k] for k in ("state", "done", "total")} == \
        {"state": "failed", "done": 3, "total": 10}  # a failed job keeps what it had done
    for _i in range(40):
        with jobs.run("snapshot", total=5) as job:
            job(7)  # more than announced: a finished job's total covers what it did
    shown = jobs.to_dict()
    assert len(shown) == 16 and "boom" not in shown and list(shown)[-1] == "snapshot-40"
    assert all((j["state"], j["done"], j["total"]) == ("done", 7, 7) for j in shown.values())
    with jobs.run("reproject", "live") as job:
        job.set_total(100)
        job.describe("replay")
        job(40)
        running = jobs.to_dict()["live"]
        assert (running["state"], running["done"], running["total"], running["phase"]) == \
            ("running", 40, 100, "replay")
        with pytest.raises(BadRequest), jobs.run("reproject", "live"):
            pass  # an id in use


def test_a_new_job_id_never_takes_one_a_client_chose():
    """A client's "reproject-1" was replaced in the listing by the next unnamed reproject's id."""
    jobs = Jobs()
    with jobs.run("reproject", "reproject-1"):
        pass
    with jobs.run("reproject") as job:
        assert job.id != "reproject-1"
    assert set(jobs.to_dict()) == {"reproject-1", job.id}
