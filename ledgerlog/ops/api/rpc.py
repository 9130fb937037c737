"""JSON-RPC 2.0 at ``POST /rpc``: a bitcoind-flavoured read API over the node's projections.

Transport: the HTTP status is 200 for every answered call, errors included (as bitcoind does for
JSON-RPC 2.0 requests); 204 with no body when every call was a notification (no ``id``
member). Batches (a JSON array) answer an array, in request order, without the notifications'
entries; an empty batch or one over ``MAX_BATCH`` calls is one ``-32600``. The usual HTTP limits
apply before any of this (413 for a body over the cap, see ops/limits.py). ``jsonrpc`` must be
exactly ``"2.0"``. ``params`` may be by position (array) or by name (object). The projections
are first brought up to everything admitted before the request (read-your-writes), as for the
REST queries; the calls then read them as they are, so the calls of one batch may see blocks
folded meanwhile (ask ``getblockcount`` and pass its height to ``getbalance`` for one height).

Errors (``error.code``):

| code | when |
|---|---|
| -32700 | parse error: the body is not JSON (UTF-8, no NaN/Infinity) |
| -32600 | invalid request: not an object, ``jsonrpc`` is not "2.0", ``method`` not a string, ``params`` neither array nor object, ``id`` not a string/number/null, empty or oversized batch |
| 403 (HTTP) | ``ORIGIN_NOT_ALLOWED``: the request carries the ``Origin`` of a web page that is neither the node's own nor in ``http.allowed_origins`` (a page of any site could otherwise make its visitors' browsers post batches to a node on 127.0.0.1); tools send no ``Origin`` |
| -32601 | method not found |
| -32602 | invalid params: missing, unknown or too many parameters, or a parameter of the wrong JSON type |
| -32603 | internal error (details only in the node's log) |
| -32001 | the answer budget is spent: the calls of one request return at most ``MAX_ROWS`` transactions and mempool entries and ``MAX_ANSWER_BYTES`` bytes of results in all; the calls past it get this instead of their result (send fewer per batch) |
| -5 | not found: no block with that hash; an address that is not 40 lowercase hex (bitcoind's RPC_INVALID_ADDRESS_OR_KEY) |
| -8 | out of range / invalid value: height below 0 or above the tip, verbosity not 0-2, a block id that is neither a height nor 64 hex (bitcoind's RPC_INVALID_PARAMETER) |
| -1 | a block (or a balance as of a height) below the height the log was pruned at: "Block not available (pruned data)" (bitcoind's RPC_MISC_ERROR) |

Methods (times: bitcoind fields in seconds, ``*_ms`` extras in milliseconds; amounts in base units):

- ``getblockchaininfo()``: ``chain`` (the chain id), ``blocks`` (height the projections reflect),
  ``headers`` (height admitted), ``bestblockhash``, ``time`` and ``mediantime`` (median of the
  last 11 block timestamps), ``initialblockdownload`` (a projection lags by more than the
  readiness threshold), ``pruned`` (and ``pruneheight``: the lowest height whose block is still
  held), ``warnings``; extras: ``chain_id``, ``genesis_hash``,
  ``time_ms``, ``mediantime_ms``, ``total_txs``, ``mempool``, ``lag``, ``provenance``.
- ``getblockcount()``, ``getbestblockhash()``.
- ``getblockhash(height)``: the hash at ``height``; 0 is the genesis hash (block 1's prev_hash).
- ``getblock(blockhash, verbosity=1)``: ``blockhash`` is a 64-hex hash or a height (integer or
  digit string). Verbosity 0: hex of the header's canonical Avro bytes (H of them is the hash;
  for the genesis, the canonical genesis JSON). 1: an object with ``tx`` as txids. 2: ``tx`` as
  objects (txid, index, body, pubkey, signature). Height 0 / the genesis hash is a genesis
  pseudo-block with no transactions.
- ``getbalance(address, height=null)``: an object ``{address, balance, staked, nonce, ...,
  provenance}`` (not bitcoind's bare number: ledgerlog is account based).
- ``getrawmempool(verbose=false)``: pending txids; verbose: ``{txid: {sender, nonce, stamp_height}}``.
- ``gettimesyncinfo()``: ``time``/``time_ms`` (node clock), ``tip_time``/``tip_time_ms`` (the
  tip block's header timestamp), ``offset_ms`` = node time - tip time (how long ago, by this
  node's clock, the tip was stamped; negative when the tip is stamped in the node's future),
  ``tip_in_future``, ``tip_height``.
- ``getnetworkinfo()``: ``version``, ``subversion`` ("/ledgerlog:x.y.z/"), ``protocolversion``
  (1), ``connections`` (0: ledgerlog has no peer-to-peer network), ``networkactive`` (false),
  ``localaddresses`` (the HTTP API's address), ``relayfee`` (min_fee), ``warnings``.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from importlib import metadata
from itertools import islice
from typing import TYPE_CHECKING, Any

from ledgerlog.engine import avro
from ledgerlog.engine.crypto import canonical_json
from ledgerlog.engine.errors import BadRequest, NotFoundError, PrunedError, RpcError
from ledgerlog.engine.genesis import ADDRESS_RE, HEX64_RE
from ledgerlog.engine.intjson import dumps_any
from ledgerlog.ops.api.guard import public
from ledgerlog.projections import chainstate
from ledgerlog.projections.base import jload

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext as Node

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_BATCH",
    "METHODS",
    "METHOD_NOT_FOUND",
    "NOT_FOUND",
    "OUT_OF_RANGE",
    "PARSE_ERROR",
    "TOO_LARGE",
    "RpcError",
    "handle",
    "openapi_body",
]

log = logging.getLogger("ledgerlog.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TOO_LARGE = -32001   # a server error (JSON-RPC 2.0 reserves -32000..-32099): the answer budget is spent
NOT_FOUND = -5       # bitcoind RPC_INVALID_ADDRESS_OR_KEY
MISC_ERROR = -1      # bitcoind RPC_MISC_ERROR (a pruned block)
OUT_OF_RANGE = -8    # bitcoind RPC_INVALID_PARAMETER

MAX_BATCH = 1000
#: Rows (transactions, mempool entries) the calls of one request may return together: a batch
#: of 1,000 getblock verbosity-2 calls on full blocks would otherwise build 10M of them
MAX_ROWS = 100_000
#: JSON bytes of results the calls of one request may return together: a memo may take up to the
#: 16 MiB of a line, so 1,000 getblock calls on its block would otherwise build 16 GB
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_REQUIRED = object()


def _version() -> str:
    try:
        return metadata.version("ledgerlog")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# -- parameters ----------------------------------------------------------------------------------
def _bind(params: Any, spec: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    names = [n for n, _ in spec]
    if params is None:
        given: dict[str, Any] = {}
    elif isinstance(params, list):
        if len(params) > len(spec):
            raise RpcError(INVALID_PARAMS, f"at most {len(spec)} parameters ({', '.join(names) or 'none'})")
        given = dict(zip(names, params))
    else:
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise RpcError(INVALID_PARAMS, f"unknown parameter(s) {unknown}; have {names}")
        given = dict(params)
    out = {}
    for name, default in spec:
        if name in given:
            out[name] = given[name]
        elif default is _REQUIRED:
            raise RpcError(INVALID_PARAMS, f"missing parameter {name!r}")
        else:
            out[name] = default
    return out


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RpcError(INVALID_PARAMS, f"{name} must be an integer")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{name} must be a string")
    return value


# -- the methods ---------------------------------------------------------------------------------
class Ctx:
    """What a request's calls share: the node, one synced chainstate view, the API's address."""

    def __init__(self, node: Node, local: tuple[str, int] | None, max_lag: int) -> None:
        self.node = node
        self.local = local
        self.max_lag = max_lag
        self._cs: Any = None
        self.rows_left = MAX_ROWS
        self.bytes_left = MAX_ANSWER_BYTES

    def take_rows(self, n: int) -> None:
        """Count ``n`` rows of an answer against the request's budget (MAX_ROWS); once it is
        spent, every later call is refused (without walking: getrawmempool reads rows_left + 1)."""
        self.rows_left -= n
        if self.rows_left < 0:
            raise RpcError(TOO_LARGE, f"the calls of this request return more than {MAX_ROWS} "
                                      "transactions or mempool entries in all: send fewer per batch")

    def take_bytes(self, answer: bytes) -> bool:
        """Count one call's answer (as sent) against the request's budget (MAX_ANSWER_BYTES):
        False once it is spent (this call's and every later one's answer is refused)."""
        self.bytes_left -= len(answer)
        return self.bytes_left >= 0

    @property
    def cs(self) -> Any:
        if self._cs is None:
            self._cs = self.node.runner.handles["chainstate"].store.view()
        return self._cs

    def tip(self) -> dict[str, Any]:
        return chainstate.tip(self.cs)

    def check_height(self, height: int) -> int:
        if height < 0 or height > self.tip()["height"]:
            raise RpcError(OUT_OF_RANGE, "Block height out of range")
        return height

    def check_held(self, height: int) -> int:
        """``height`` unless its block lies below the log's prune point (the genesis, 0, is kept)."""
        point = self.node.chain.log.prune_point()
        if height > 0 and point is not None and height < point.height:
            raise RpcError(MISC_ERROR, f"Block not available (pruned data): the log was pruned below height "
                                       f"{point.height}")
        return height


def getblockchaininfo(ctx: Ctx) -> dict[str, Any]:
    node, tip = ctx.node, ctx.tip()
    recent = chainstate.recent_blocks(ctx.cs, 11)
    stamps = sorted(b["timestamp"] for b in recent) or [node.genesis.timestamp]
    median = stamps[len(stamps) // 2]
    lag = node.runner.lag()
    return {"chain": node.genesis.chain_id, "blocks": tip["height"],
            "headers": max(node.tip().height, tip["height"]), "bestblockhash": tip["tip_hash"],
            "time": tip["tip_timestamp"] // 1000, "mediantime": median // 1000,
            "initialblockdownload": any(v > ctx.max_lag for v in lag.values()),
            "pruned": (point := node.chain.log.prune_point()) is not None,
            **({"pruneheight": point.height} if point is not None else {}),
            "warnings": "",
            "chain_id": node.genesis.chain_id, "genesis_hash": node.genesis.hash,
            "time_ms": tip["tip_timestamp"], "mediantime_ms": median, "total_txs": tip["total_txs"],
            "mempool": chainstate.mempool_size(ctx.cs), "lag": lag,
            "provenance": node.queries.provenance("chainstate")}


def getblockcount(ctx: Ctx) -> int:
    return int(ctx.tip()["height"])


def getbestblockhash(ctx: Ctx) -> str:
    return str(ctx.tip()["tip_hash"])


def getblockhash(ctx: Ctx, height: Any) -> str:
    h = ctx.check_held(ctx.check_height(_int(height, "height")))
    if h == 0:
        return ctx.node.genesis.hash
    found = chainstate.block(ctx.cs, h)
    if found is None:
        raise RpcError(OUT_OF_RANGE, "Block height out of range")
    return str(found["hash"])


def _resolve(ctx: Ctx, ident: Any) -> int:
    """A block id (height or 64-hex hash) -> its height."""
    if isinstance(ident, int) and not isinstance(ident, bool):
        return ctx.check_height(ident)
    ident = _str(ident, "blockhash")
    if HEX64_RE.match(ident):
        if ident == ctx.node.genesis.hash:
            return 0
        raw = ctx.cs.get(b"bh/" + ident.encode())  # chainstate: bh/<hash> -> height (8 bytes)
        if raw is None:
            raise RpcError(NOT_FOUND, "Block not found")
        return int.from_bytes(raw, "big")
    if ident.isascii() and ident.isdigit() and len(ident) <= 19:  # not "²" nor "١"
        return ctx.check_height(int(ident))
    raise RpcError(OUT_OF_RANGE, "blockhash must be a 64-hex block hash or a height")


def _verbosity(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    v = _int(value, "verbosity")
    if v not in (0, 1, 2):
        raise RpcError(OUT_OF_RANGE, "verbosity must be 0, 1 or 2")
    return v


def getblock(ctx: Ctx, blockhash: Any, verbosity: Any = 1) -> Any:
    v = _verbosity(verbosity)
    height = ctx.check_held(_resolve(ctx, blockhash))
    tip_height = ctx.tip()["height"]
    g = ctx.node.genesis
    nxt = None
    if height < tip_height:
        after = chainstate.block(ctx.cs, height + 1)
        nxt = after["hash"] if after else None
    if height == 0:
        if v == 0:
            return canonical_json(g.raw).hex()
        out: dict[str, Any] = {"hash": g.hash, "confirmations": tip_height + 1, "height": 0,
                               "time": g.timestamp // 1000, "time_ms": g.timestamp, "nTx": 0, "tx": [],
                               "chain_id": g.chain_id, "genesis": True}
        if nxt:
            out["nextblockhash"] = nxt
        return out
    ev = chainstate.block(ctx.cs, height)
    if ev is None:
        raise RpcError(NOT_FOUND, "Block not found")
    hdr = ev["header"]
    if v == 0:
        return avro.encode("BlockHeader", hdr).hex()
    ctx.take_rows(len(ev["txids"]))
    txs: list[Any] = list(ev["txids"])
    if v == 2:
        txs = []
        for txid in ev["txids"]:
            t = chainstate.tx(ctx.cs, txid) or {"txid": txid}
            txs.append({k: t[k] for k in ("txid", "index", "body", "pubkey", "signature") if k in t})
    out = {"hash": ev["hash"], "confirmations": tip_height - height + 1, "height": height,
           "merkleroot": hdr["tx_root"], "time": hdr["timestamp"] // 1000, "time_ms": hdr["timestamp"],
           "nTx": hdr["tx_count"], "tx": txs, "previousblockhash": hdr["prev_hash"],
           "chain_id": hdr["chain_id"], "producer": hdr["producer"], "pubkey": ev.get("pubkey"),
           "signature": ev.get("signature"), "fees": ev.get("fees"), "reward": ev.get("reward"),
           "evicted": ev.get("evicted", [])}
    if nxt:
        out["nextblockhash"] = nxt
    return out


def getbalance(ctx: Ctx, address: Any, height: Any = None) -> dict[str, Any]:
    addr = _str(address, "address")
    if not ADDRESS_RE.match(addr):
        raise RpcError(NOT_FOUND, "Invalid address: expected 40 lowercase hex characters")
    if height is not None:
        ctx.check_height(_int(height, "height"))
    return ctx.node.queries.account(addr, height)


def getrawmempool(ctx: Ctx, verbose: Any = False) -> Any:
    if not isinstance(verbose, bool):
        raise RpcError(INVALID_PARAMS, "verbose must be a boolean")
    # chainstate keys: mp/<txid> marks a pending tx; ms/<txid> -> [stamp_height, sender, nonce]
    # no further than the request's row budget allows (+1 to know it is over): the mempool is unbounded
    ctx.take_rows(0)  # and not at all once it is spent
    txids = [k[3:].decode() for k, _ in islice(ctx.cs.items(b"mp/"), ctx.rows_left + 1)]
    ctx.take_rows(len(txids))
    if not verbose:
        return txids
    out = {}
    for txid in txids:
        sub = jload(ctx.cs.get(b"ms/" + txid.encode())) or [None, None, None]
        out[txid] = {"sender": sub[1], "nonce": sub[2], "stamp_height": sub[0]}
    return out


def gettimesyncinfo(ctx: Ctx) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    tip = ctx.tip()
    ts = tip["tip_timestamp"]
    return {"time": now_ms // 1000, "time_ms": now_ms, "tip_height": tip["height"], "tip_time": ts // 1000,
            "tip_time_ms": ts, "offset_ms": now_ms - ts, "tip_in_future": ts > now_ms,
            "genesis_time_ms": ctx.node.genesis.timestamp}


def getnetworkinfo(ctx: Ctx) -> dict[str, Any]:
    ver = _version()
    nums = [int(p) if p.isdigit() else 0 for p in ([*ver.split("."), "0", "0"])[:3]]
    local = []
    if ctx.node.url:
        m = re.match(r"^https?://\[?([^\]]+?)\]?:(\d+)$", ctx.node.url)
        if m:
            local.append({"address": m.group(1), "port": int(m.group(2)), "score": 1})
    elif ctx.local:
        local.append({"address": ctx.local[0], "port": ctx.local[1], "score": 1})
    return {"version": nums[0] * 10000 + nums[1] * 100 + nums[2], "subversion": f"/ledgerlog:{ver}/",
            "protocolversion": 1, "localservices": "0000000000000000", "localservicesnames": [],
            "localrelay": False, "timeoffset": 0, "networkactive": False, "connections": 0,
            "connections_in": 0, "connections_out": 0, "networks": [], "relayfee": ctx.node.genesis.min_fee,
            "localaddresses": local, "warnings": "", "chain_id": ctx.node.genesis.chain_id}


#: name -> (function, ((param, default or _REQUIRED), ...))
METHODS: dict[str, tuple[Callable[..., Any], tuple[tuple[str, Any], ...]]] = {
    "getblockchaininfo": (getblockchaininfo, ()),
    "getblockcount": (getblockcount, ()),
    "getbestblockhash": (getbestblockhash, ()),
    "getblockhash": (getblockhash, (("height", _REQUIRED),)),
    "getblock": (getblock, (("blockhash", _REQUIRED), ("verbosity", 1))),
    "getbalance": (getbalance, (("address", _REQUIRED), ("height", None))),
    "getrawmempool": (getrawmempool, (("verbose", False),)),
    "gettimesyncinfo": (gettimesyncinfo, ()),
    "getnetworkinfo": (getnetworkinfo, ()),
}


# -- the envelope --------------------------------------------------------------------------------
def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": rid}


def _valid_id(rid: Any) -> bool:
    return rid is None or isinstance(rid, str) or (isinstance(rid, (int, float)) and not isinstance(rid, bool))


def _answer(ctx: Ctx, req: Any) -> bytes | None:
    """One call's answer as sent (None for a notification): a result that would take the
    request past MAX_ANSWER_BYTES is answered TOO_LARGE instead."""
    answer = _call(ctx, req)
    if answer is None:
        return None
    data = dumps_any(answer)  # (the stdlib's, escaped, for what orjson refuses: counted as written)
    if "result" in answer and not ctx.take_bytes(data):
        return dumps_any(_error(answer["id"], TOO_LARGE, f"the calls of this request return more than "
                                                         f"{MAX_ANSWER_BYTES} bytes in all: send fewer per batch"))
    return data


def _call(ctx: Ctx, req: Any) -> dict[str, Any] | None:
    if not isinstance(req, dict):
        return _error(None, INVALID_REQUEST, "Invalid Request: expected an object")
    notification = "id" not in req
    rid = req.get("id")
    if not _valid_id(rid):
        return _error(None, INVALID_REQUEST, "Invalid Request: id must be a string, a number or null")
    if req.get("jsonrpc") != "2.0":
        return _error(rid, INVALID_REQUEST, 'Invalid Request: jsonrpc must be "2.0"')
    method = req.get("method")
    if not isinstance(method, str):
        return _error(rid, INVALID_REQUEST, "Invalid Request: method must be a string")
    params = req.get("params")
    if "params" in req and not isinstance(params, (list, dict)):
        return _error(rid, INVALID_REQUEST, "Invalid Request: params must be an array or an object")
    entry = METHODS.get(method)
    try:
        if entry is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method[:100]}")
        fn, spec = entry
        result = fn(ctx, **_bind(params, spec))
    except RpcError as exc:
        return None if notification else _error(rid, exc.rpc_code, exc.message)
    except NotFoundError as exc:
        return None if notification else _error(rid, NOT_FOUND, str(exc))
    except PrunedError as exc:
        return None if notification else _error(rid, MISC_ERROR, f"pruned data: {public(str(exc))}")
    except BadRequest as exc:
        return None if notification else _error(rid, OUT_OF_RANGE, str(exc))
    except Exception as exc:
        log.exception("rpc %s failed", method)
        return None if notification else _error(rid, INTERNAL_ERROR, f"Internal error ({type(exc).__name__})")
    return None if notification else {"jsonrpc": "2.0", "result": result, "id": rid}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent; one too large for a float (1e999) is refused
    like NaN, not read as infinity (no answer could carry it back)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def handle(node: Node, body: bytes, *, local: tuple[str, int] | None = None,
           max_lag: int = 10_000) -> bytes | None:
    """The JSON-RPC answer to an HTTP body, as sent: a response object, an array of them, or
    None (all notifications: answer 204)."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return dumps_any(_error(None, PARSE_ERROR, "Parse error: the body is not valid JSON"))
    if isinstance(doc, list):
        if not doc:
            return dumps_any(_error(None, INVALID_REQUEST, "Invalid Request: empty batch"))
        if len(doc) > MAX_BATCH:
            return dumps_any(_error(None, INVALID_REQUEST,
                                    f"Invalid Request: a batch may hold at most {MAX_BATCH} calls"))
    node.queries.sync()
    ctx = Ctx(node, local, max_lag)
    if isinstance(doc, list):
        answers = [a for a in (_answer(ctx, req) for req in doc) if a is not None]
        return b"[" + b",".join(answers) + b"]" if answers else None
    return _answer(ctx, doc)


def openapi_body() -> dict[str, Any]:
    """The request body's description for /openapi.json."""
    request = {"type": "object", "required": ["jsonrpc", "method"],
               "properties": {"jsonrpc": {"type": "string", "enum": ["2.0"]},
                              "method": {"type": "string", "enum": sorted(METHODS)},
                              "params": {"oneOf": [{"type": "array"}, {"type": "object"}]},
                              "id": {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}}}
    return {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [request, {"type": "array", "items": request, "minItems": 1, "maxItems": MAX_BATCH}]}}}}
