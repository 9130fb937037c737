"""`ledgerlog faucet import-key` / `rotate-key` as an operator runs them, on a data dir alone and
through a running node (`ledgerlog run` subprocesses), and the faucet's per-IP and per-address
limits holding across a restart of that node (429 with the remaining Retry-After)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
from clitools import cli, cli_env, ok_json, running_node

from ledgerlog.engine.signing import Signer

LIMITS = {"LEDGERLOG_FAUCET_IP_BURST": "2", "LEDGERLOG_FAUCET_IP_INTERVAL": "3600",
          "LEDGERLOG_FAUCET_ADDRESS_BURST": "1", "LEDGERLOG_FAUCET_ADDRESS_INTERVAL": "3600"}


def _init(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    ok_json(cli(data, "init"))
    return data


def _faucet_key(data: Path) -> dict[str, Any]:
    return json.loads((data / "keys" / "faucet.key").read_text())


def _new_key_file(tmp_path: Path, name: str) -> tuple[Path, Signer]:
    path = tmp_path / name
    out = ok_json(cli(tmp_path, "keys", "new", "--out", str(path)))
    key = Signer.from_seed(json.loads(path.read_text())["seed"])
    assert out["address"] == key.address
    return path, key


def _all_text(data: Path) -> str:
    """What the node and the CLI could have written down: its logs and every record of its log."""
    logs = [p for p in (data / "logs").glob("*")] + [Path(f"{data}.node.log")]
    text = "".join(p.read_text(errors="replace") for p in logs if p.is_file())
    for topic in ("ledger.admin", "ledger.mempool", "ledger.keys"):
        text += cli(data, "tail", topic, "--raw").stdout.decode()
        text += cli(data, "tail", topic).stdout.decode()
    return text


def test_import_and_rotate_on_a_data_dir_alone(tmp_path) -> None:
    data = _init(tmp_path)
    first = Signer.from_seed(_faucet_key(data)["seed"])
    path, key = _new_key_file(tmp_path, "op.key")

    out = ok_json(cli(data, "faucet", "import-key", str(path)))
    assert (out["address"], out["previous_address"], out["via"], out["spendable"]) == (key.address, first.address,
                                                                                      "local", 0)
    assert _faucet_key(data)["seed"] == key.seed
    assert stat.S_IMODE(os.stat(data / "keys" / "faucet.key").st_mode) == 0o600
    retired = data / "keys" / "retired" / f"faucet-{first.pubkey[:16]}.key"
    assert json.loads(retired.read_text())["seed"] == first.seed

    # the first key back, from standard input: a key file, then a bare seed
    out = ok_json(cli(data, "faucet", "import-key", "-", stdin=retired.read_bytes()))
    assert out["address"] == first.address and out["spendable"] > 0
    out = ok_json(cli(data, "faucet", "import-key", "--seed-hex", "-", stdin=f"{key.seed}\n".encode()))
    assert out["address"] == key.address
    out = ok_json(cli(data, "faucet", "import-key", "--seed-hex", "-", stdin=first.seed.encode()))
    assert out["address"] == first.address

    # malformed keys: a typed error, no traceback, the seed never echoed, nothing changed
    before = (data / "keys" / "faucet.key").read_bytes()
    edited = tmp_path / "edited.key"
    edited.write_text(json.dumps({**json.loads(path.read_text()), "address": "00" * 20}))
    for args, stdin in (((str(edited),), None), (("--seed-hex", "-"), key.seed[:-1].encode()),
                        (("-",), b"{not json"), (("--seed-hex", "-"), b"")):
        proc = cli(data, "faucet", "import-key", *args, stdin=stdin)
        err = json.loads(proc.stderr)
        assert proc.returncode == 2 and err["code"] == "BAD_KEY", proc.stderr
        assert key.seed[:-1] not in proc.stderr.decode() and "Traceback" not in proc.stderr.decode()
    for args in (("--seed-hex", key.seed), (str(path), "--seed-hex", "-"), (), (str(tmp_path / "absent"),)):
        proc = cli(data, "faucet", "import-key", *args)
        assert proc.returncode == 2 and json.loads(proc.stderr)["code"] == "USAGE", (args, proc.stderr)
        assert key.seed not in proc.stderr.decode()
    assert (data / "keys" / "faucet.key").read_bytes() == before

    # rotation: the balance moves to a fresh key by a transaction on the log
    rot = ok_json(cli(data, "faucet", "rotate-key"))
    assert rot["old_address"] == first.address and rot["via"] == "local" and rot["amount"] > 0
    assert Signer.from_seed(_faucet_key(data)["seed"]).address == rot["new_address"]
    tx = ok_json(cli(data, "tx", rot["txid"]))
    assert (tx["status"], tx["sender"]) == ("pending", first.address)
    assert not (data / "keys" / "faucet.key.next").exists()
    # the transfer is still pending: a second rotation would strand it
    proc = cli(data, "faucet", "rotate-key")
    assert proc.returncode == 1 and json.loads(proc.stderr)["code"] == "ROTATION_REFUSED"


def _grant(c: httpx.Client, address: str) -> httpx.Response:
    return c.post("/v1/faucet", json={"address": address})


def test_limits_survive_a_restart_and_keys_change_through_the_running_node(tmp_path) -> None:
    data = _init(tmp_path)
    env = cli_env(**LIMITS)
    alice, bob, carol, dave = (Signer.generate().address for _ in range(4))
    other_ip = httpx.HTTPTransport(local_address="127.0.0.2")  # a second client on the loopback
    with running_node(data, env=env) as url:
        with httpx.Client(base_url=url, timeout=30) as one, \
                httpx.Client(base_url=url, timeout=30, transport=other_ip) as two:
            assert _grant(one, alice).status_code == 200
            assert _grant(one, bob).status_code == 200
            r = _grant(one, carol)
            assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED"   # this IP's burst is spent
            r = _grant(two, alice)
            assert r.status_code == 429 and "address" in r.json()["message"]    # alice's too, from any IP
    assert (data / "faucet" / "grants.sqlite").is_file()

    with running_node(data, env=env) as url:  # a restart does not refill the buckets
        with httpx.Client(base_url=url, timeout=30) as one, \
                httpx.Client(base_url=url, timeout=30, transport=other_ip) as two:
            r = _grant(one, carol)
            assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED", r.text
            assert 1800 < int(r.headers["Retry-After"]) <= 3600  # the remaining wait, not a fresh one
            r = _grant(two, alice)
            assert r.status_code == 429 and 1800 < int(r.headers["Retry-After"]) <= 3600
            assert _grant(two, dave).status_code == 200  # other clients and addresses are served

            # the operator's key, through the node: used at once, no restart
            path, key = _new_key_file(tmp_path, "op.key")
            out = ok_json(cli(data, "faucet", "import-key", str(path), env=env))
            assert out["via"] == "node" and out["address"] == key.address
            assert one.get("/v1/faucet").json()["address"] == key.address
            # and back to a funded key by a rotation from the first one
            first = data / "keys" / "retired"
            funded = next(p for p in first.iterdir() if json.loads(p.read_text())["address"] != key.address)
            ok_json(cli(data, "faucet", "import-key", "-", stdin=funded.read_bytes(), env=env))
            rot = ok_json(cli(data, "faucet", "rotate-key", env=env))
            assert rot["via"] == "node" and rot["txid"] and rot["amount"] > 0
            assert one.get("/v1/faucet").json()["address"] == rot["new_address"]
            tx = one.get(f"/v1/tx/{rot['txid']}").json()
            assert (tx["status"], tx["sender"]) == ("pending", rot["old_address"])
    events = [json.loads(x)["value"] for x in cli(data, "tail", "ledger.admin").stdout.splitlines()]
    imports = [e for e in events if e["action"] == "faucet-import-key"]
    assert len(imports) == 2 and all(json.loads(e["params"]) == {"seed": "<redacted>"} for e in imports)
    assert [e["outcome"] for e in events if e["action"] == "faucet-rotate-key"] == ["ok"]
    text = _all_text(data)
    assert key.seed not in text and json.loads(funded.read_text())["seed"] not in text
