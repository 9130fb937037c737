"""Configuration: one frozen, typed object. Built at the edge (CLI) from, in rising precedence,
``<data_dir>/config.toml``, ``LEDGERLOG_*`` environment variables and flags; inner code receives
it and never reads the environment itself."""
from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .durations import parse_duration
from .errors import ConfigError
from .log.kafka_config import KafkaConfig
from .rocks import RocksTuning
from .rocks import configure as configure_rocks
from .topics import DEFAULT_PARTITIONS

__all__ = ["SETTINGS", "Config", "MAX_PARTITIONS", "env_values", "load_config"]

#: partitions of a keyed topic, at most (each is folded, read ahead and audited on its own)
MAX_PARTITIONS = 1024

#: (toml section.key, env var, Config field, type, doc) — the single table docs are made from.
SETTINGS: tuple[tuple[str, str, str, type, str], ...] = (
    ("log.url", "LEDGERLOG_LOG_URL", "log_url", str,
     "embedded (RocksDB under <data_dir>/log) or kafka://HOST:PORT[,HOST:PORT]"),
    ("log.sync", "LEDGERLOG_LOG_SYNC", "sync", bool,
     "fsync every appended batch before acknowledging (default true)"),
    ("log.partitions", "LEDGERLOG_PARTITIONS", "partitions", int,
     "partitions of each keyed topic, fixed at init (ledger.blocks always has 1)"),
    ("ingest.chunk", "LEDGERLOG_INGEST_CHUNK", "ingest_chunk", int,
     "lines admitted per atomic, synced append"),
    ("ingest.verify_workers", "LEDGERLOG_VERIFY_WORKERS", "verify_workers", int,
     "processes verifying signatures in parallel (0 = one per core)"),
    ("heads.interval", "LEDGERLOG_HEADS_INTERVAL", "head_interval", float,
     "seconds between signed tree heads of a growing partition on _checkpoints (PROTOCOL.md §9)"),
    ("rocksdb.block_cache_mb", "LEDGERLOG_ROCKSDB_BLOCK_CACHE_MB", "rocksdb_block_cache_mb", int,
     "MiB of block cache shared by every RocksDB store of a process (index, filter and data blocks)"),
    ("rocksdb.write_buffer_mb", "LEDGERLOG_ROCKSDB_WRITE_BUFFER_MB", "rocksdb_write_buffer_mb", int,
     "MiB per memtable; each open store holds up to two (log, projections, and builds during a reproject)"),
    ("rocksdb.max_open_files", "LEDGERLOG_ROCKSDB_MAX_OPEN_FILES", "rocksdb_max_open_files", int,
     "table files a store keeps open (-1: all, RocksDB's default)"),
    ("rocksdb.compression", "LEDGERLOG_ROCKSDB_COMPRESSION", "rocksdb_compression", str,
     "none, snappy, lz4, lz4hc, zstd or zlib for every level, or a comma-separated list, one per level"),
    ("fold.batch", "LEDGERLOG_FOLD_BATCH", "fold_batch", int,
     "records a projection folds per atomic commit"),
    ("fold.workers", "LEDGERLOG_FOLD_WORKERS", "fold_workers", int,
     "processes a rebuild (reproject) spreads projections over (0 = one per core)"),
    ("http.host", "LEDGERLOG_HTTP_HOST", "http_host", str, "address the node's HTTP API binds"),
    ("http.port", "LEDGERLOG_HTTP_PORT", "http_port", int, "port of the node's HTTP API"),
    ("http.max_body", "LEDGERLOG_HTTP_MAX_BODY", "http_max_body", int,
     "bytes a POST/PUT/PATCH body may carry, except POST /v1/ingest (413 TOO_LARGE above)"),
    ("http.ingest_max_body", "LEDGERLOG_INGEST_MAX_BODY", "http_ingest_max_body", int,
     "bytes a POST /v1/ingest body may carry (413 TOO_LARGE above)"),
    ("http.ingest_rate", "LEDGERLOG_INGEST_RATE", "http_ingest_rate", float,
     "POST /v1/ingest requests per second per client IP (0 = no limit; 429 RATE_LIMITED above)"),
    ("http.ingest_burst", "LEDGERLOG_INGEST_BURST", "http_ingest_burst", int,
     "POST /v1/ingest requests a client IP may make at once"),
    ("http.ready_max_lag", "LEDGERLOG_READY_MAX_LAG", "http_ready_max_lag", int,
     "records a projection may lag before GET /v1/ready answers 503 NOT_READY"),
    ("http.keep_alive_timeout", "LEDGERLOG_HTTP_KEEP_ALIVE_TIMEOUT", "http_keep_alive_timeout", float,
     "seconds an idle keep-alive connection stays open"),
    ("http.header_timeout", "LEDGERLOG_HTTP_HEADER_TIMEOUT", "http_header_timeout", float,
     "seconds a connection has to send a whole request head (408 TIMEOUT, then closed)"),
    ("http.body_timeout", "LEDGERLOG_HTTP_BODY_TIMEOUT", "http_body_timeout", float,
     "seconds a request has to send its whole body after its head (408 TIMEOUT, then closed)"),
    ("http.send_timeout", "LEDGERLOG_HTTP_SEND_TIMEOUT", "http_send_timeout", float,
     "seconds an answer may wait on a client that does not read it (then the connection is aborted)"),
    ("http.max_connections", "LEDGERLOG_HTTP_MAX_CONNECTIONS", "http_max_connections", int,
     "open connections; past it the longest-idle one is closed, and only when every one is "
     "busy does a new one get 503 (0 = no limit)"),
    ("http.allowed_origins", "LEDGERLOG_HTTP_ALLOWED_ORIGINS", "http_allowed_origins", str,
     "comma-separated web origins (scheme://host[:port]) allowed to POST /v1/ingest from a browser "
     "(empty: none; 403 ORIGIN_NOT_ALLOWED)"),
    ("http.allowed_hosts", "LEDGERLOG_HTTP_ALLOWED_HOSTS", "http_allowed_hosts", str,
     "comma-separated host names the node answers to besides its own address, localhost, "
     "127.0.0.1 and ::1 (others: 421 HOST_NOT_ALLOWED)"),
    ("admin.token", "LEDGERLOG_ADMIN_TOKEN", "admin_token", str,
     "bearer token for /v1/admin/*, at least 16 characters; admin is disabled when empty"),
    ("admin.allow", "LEDGERLOG_ADMIN_ALLOW", "admin_allow", str,
     "comma-separated client IPs or CIDR networks allowed to use /v1/admin/* (empty: any, with the token)"),
    ("faucet.enabled", "LEDGERLOG_FAUCET_ENABLED", "faucet_enabled", bool,
     "false disables the faucet (503 FAUCET_DISABLED)"),
    ("faucet.amount", "LEDGERLOG_FAUCET_AMOUNT", "faucet_amount", int,
     "base units per faucet grant (the fee, min_fee, is on top)"),
    ("faucet.key", "LEDGERLOG_FAUCET_KEY", "faucet_key", str,
     "key file of the faucet (empty: <data_dir>/keys/faucet.key)"),
    ("faucet.topup_key", "LEDGERLOG_FAUCET_TOPUP_KEY", "faucet_topup_key", str,
     "key file faucet top-ups are sent from (empty: <data_dir>/keys/treasury.key)"),
    ("faucet.ip_burst", "LEDGERLOG_FAUCET_IP_BURST", "faucet_ip_burst", int,
     "faucet grants a client IP may get at once"),
    ("faucet.ip_interval", "LEDGERLOG_FAUCET_IP_INTERVAL", "faucet_ip_interval", float,
     "seconds for a client IP to earn one more faucet grant (0 = no limit)"),
    ("faucet.address_burst", "LEDGERLOG_FAUCET_ADDRESS_BURST", "faucet_address_burst", int,
     "faucet grants an address may get at once"),
    ("faucet.address_interval", "LEDGERLOG_FAUCET_ADDRESS_INTERVAL", "faucet_address_interval", float,
     "seconds for an address to earn one more faucet grant (0 = no limit)"),
    ("node.log_level", "LEDGERLOG_LOG_LEVEL", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("node.log_json", "LEDGERLOG_LOG_JSON", "log_json", bool,
     "write <data_dir>/logs/node.log as JSON lines (default false: plain text)"),
    ("node.log_max_bytes", "LEDGERLOG_LOG_MAX_BYTES", "log_max_bytes", int,
     "rotate node.log at this size (0: never; leave rotation to logrotate + SIGHUP)"),
    ("node.log_backups", "LEDGERLOG_LOG_BACKUPS", "log_backups", int,
     "rotated node.log.N files kept"),
    ("trace.otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint", str,
     "OTLP/HTTP collector base URL for trace spans (e.g. http://127.0.0.1:4318); empty: no export"),
    ("snapshot.dir", "LEDGERLOG_SNAPSHOT_DIR", "snapshot_dir", str,
     "where snapshots go, and the only place the admin snapshot action writes (empty: "
     "<data_dir>/snapshots; relative: under the data dir); put backups on another disk"),
    ("snapshot.every", "LEDGERLOG_SNAPSHOT_EVERY", "snapshot_every", str,
     "the node snapshots its chain this often, like 6h (30s, 30m, 12h, 7d, 2w; empty or 0: never), "
     "then prunes per snapshot.keep and snapshot.keep_for (embedded log only)"),
    ("snapshot.keep", "LEDGERLOG_SNAPSHOT_KEEP", "snapshot_keep", int,
     "scheduled pruning keeps at least this many newest snapshots of the chain (1 or more)"),
    ("snapshot.keep_for", "LEDGERLOG_SNAPSHOT_KEEP_FOR", "snapshot_keep_for", str,
     "scheduled pruning deletes a snapshot beyond the newest snapshot.keep only once it is older "
     "than this, like 7d (empty: as soon as it is beyond them)"),
    ("retention.keep_heights", "LEDGERLOG_RETENTION_KEEP_HEIGHTS", "retention_keep_heights", int,
     "a running node prunes the log below tip - keep_heights (archiving first; 0 = never prune)"),
    ("retention.archive_dir", "LEDGERLOG_RETENTION_ARCHIVE_DIR", "retention_archive_dir", str,
     "where prunes archive the records they delete, h<H>/ per prune (empty: <data_dir>/archive; "
     "relative: under the data dir); the only place the admin prune action archives to"),
    ("retention.interval", "LEDGERLOG_RETENTION_INTERVAL", "retention_interval", float,
     "seconds between a node's retention checks"),
    ("retention.max_heights", "LEDGERLOG_RETENTION_MAX_HEIGHTS", "retention_max_heights", int,
     "heights one retention run prunes at most, so each run's work is bounded (later runs go on)"),
)


@dataclass(frozen=True)
class Config:
    data_dir: str = "./data"
    log_url: str = "embedded"
    sync: bool = True
    partitions: int = 4
    ingest_chunk: int = 1000
    verify_workers: int = 0
    head_interval: float = 1.0
    rocksdb_block_cache_mb: int = 64
    rocksdb_write_buffer_mb: int = 16
    rocksdb_max_open_files: int = -1
    rocksdb_compression: str = "snappy"
    fold_batch: int = 20_000
    fold_workers: int = 0
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_max_body: int = 1024 * 1024
    http_ingest_max_body: int = 64 * 1024 * 1024
    http_ingest_rate: float = 20.0
    http_ingest_burst: int = 60
    http_ready_max_lag: int = 10_000
    http_keep_alive_timeout: float = 5.0
    http_header_timeout: float = 10.0
    http_body_timeout: float = 60.0
    http_send_timeout: float = 30.0
    http_max_connections: int = 1000
    http_allowed_origins: str = ""
    http_allowed_hosts: str = ""
    admin_token: str = ""
    admin_allow: str = ""
    faucet_enabled: bool = True
    faucet_amount: int = 10_000_000
    faucet_key: str = ""
    faucet_topup_key: str = ""
    faucet_ip_burst: int = 5
    faucet_ip_interval: float = 60.0
    faucet_address_burst: int = 1
    faucet_address_interval: float = 3600.0
    log_level: str = "INFO"
    log_json: bool = False
    log_max_bytes: int = 50 * 1024 * 1024
    log_backups: int = 5
    otlp_endpoint: str = ""
    snapshot_dir: str = ""
    snapshot_every: str = ""
    snapshot_keep: int = 7
    snapshot_keep_for: str = "7d"
    retention_keep_heights: int = 0
    retention_archive_dir: str = ""
    retention_interval: float = 60.0
    retention_max_heights: int = 10_000
    kafka: Mapping[str, str] = field(default_factory=dict)  # [kafka] section: librdkafka settings
    config_file: str = ""  # --config PATH: the config file read instead of <data_dir>/config.toml

    def rocks_tuning(self) -> RocksTuning:
        return RocksTuning(self.rocksdb_block_cache_mb, self.rocksdb_write_buffer_mb, self.rocksdb_max_open_files,
                           self.rocksdb_compression)

    @property
    def fold_processes(self) -> int:
        """Processes a rebuild spreads over: ``fold.workers``, or one per core when it is 0."""
        return self.fold_workers or (os.cpu_count() or 1)

    @property
    def genesis_path(self) -> str:
        return os.path.join(self.data_dir, "genesis.json")

    @property
    def config_path(self) -> str:
        """``--config PATH`` (LEDGERLOG_CONFIG) if given, else ``<data_dir>/config.toml``."""
        return self.config_file or os.path.join(self.data_dir, "config.toml")

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "log")

    @property
    def keys_dir(self) -> str:
        return os.path.join(self.data_dir, "keys")

    @property
    def projections_dir(self) -> str:
        return os.path.join(self.data_dir, "projections")

    @property
    def snapshots_dir(self) -> str:
        """``snapshot.dir`` resolved: absolute, ``<data_dir>/snapshots`` when empty."""
        return os.path.abspath(os.path.join(self.data_dir, self.snapshot_dir or "snapshots"))

    @property
    def snapshot_every_seconds(self) -> int:
        """``snapshot.every`` in seconds, 0 when scheduled snapshots are off; ConfigError if malformed."""
        return _duration(self.snapshot_every, "snapshot.every", zero_off=True)

    @property
    def snapshot_keep_for_seconds(self) -> int | None:
        """``snapshot.keep_for`` in seconds, None when empty (no age condition); ConfigError if malformed."""
        return _duration(self.snapshot_keep_for, "snapshot.keep_for") if self.snapshot_keep_for else None

    @property
    def archive_dir(self) -> str:
        """``retention.archive_dir`` resolved: absolute, ``<data_dir>/archive`` when empty."""
        return os.path.abspath(os.path.join(self.data_dir, self.retention_archive_dir or "archive"))

    @property
    def anchor_dir(self) -> str:
        """Where a pruned log's anchor is (streams/anchor.py)."""
        return os.path.join(self.data_dir, "anchor")

    @property
    def node_file(self) -> str:
        return os.path.join(self.data_dir, "node.json")

    @property
    def heads_cache_path(self) -> str:
        """Where a writer keeps its fold of the published tree heads (engine/treehead.py)."""
        return os.path.join(self.data_dir, "heads-cache.json")

    @property
    def resolved_log_url(self) -> str:
        return f"embedded:{self.log_path}" if self.log_url == "embedded" else self.log_url

    def kafka_connection(self) -> KafkaConfig | None:
        """The ``[kafka]`` table as a typed connection config for the log URL's brokers (None
        when the log is not on Kafka); ConfigError if a value is invalid."""
        url = self.resolved_log_url
        if not url.startswith("kafka://"):
            return None
        return KafkaConfig.from_table(url[len("kafka://"):], self.kafka)

    def topic_partitions(self) -> dict[str, int]:
        return {t: (1 if d == 1 else self.partitions) for t, d in DEFAULT_PARTITIONS.items()}

    def to_toml(self) -> str:
        """The settings worth recording at init, as TOML."""
        out, section = [], None
        for key, _env, attr, typ, doc in SETTINGS:
            sec, name = key.split(".")
            if sec != section:
                out.append(f"\n[{sec}]")
                section = sec
            v = getattr(self, attr)
            text = (("true" if v else "false") if typ is bool else repr(v) if typ in (int, float)
                    else _toml_string(v))
            out.append(f"# {doc}\n{name} = {text}")
        if self.kafka:
            out.append("\n[kafka]")
            out.extend(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in self.kafka.items())
        return "\n".join(out).lstrip() + "\n"


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string: JSON's escapes are TOML's (quotes, backslashes, controls)."""
    return json.dumps(text, ensure_ascii=False)


def _duration(text: str, key: str, *, zero_off: bool = False) -> int:
    if zero_off and text.strip() in ("", "0"):
        return 0
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _convert(value: Any, typ: type, where: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif typ is int:
        if isinstance(value, float):  # TOML's 1.7 or inf: only a whole, finite number is an integer
            if math.isfinite(value) and value.is_integer():
                return int(value)
        elif not isinstance(value, bool):
            try:
                return int(value)
            except (TypeError, ValueError):
                pass
    elif typ is float:
        try:
            if not isinstance(value, bool):
                out = float(value)
                if math.isfinite(out):  # no NaN / infinity
                    return out
        except (TypeError, ValueError):
            pass
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")


#: the sections and keys config.toml may hold ([kafka] takes any librdkafka property)
_KNOWN: dict[str, set[str]] = {}
for _key, *_rest in SETTINGS:
    _KNOWN.setdefault(_key.split(".")[0], set()).add(_key.split(".")[1])


def _check_names(doc: Mapping[str, Any], path: str) -> None:
    """Every section of ``doc`` a table this version knows, every key one of its settings: a
    misspelt one was ignored (``[snapshots] every``: no backup was ever taken)."""
    for sec, table in doc.items():
        if sec != "kafka" and sec not in _KNOWN:
            raise ConfigError(f"{path}: unknown section [{sec}]{_did_you_mean(sec, _KNOWN)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{sec}] must be a table of settings, not {table!r}")
        for name in table if sec != "kafka" else ():
            if name not in _KNOWN[sec]:
                raise ConfigError(f"{path}: [{sec}] has no setting {name!r}{_did_you_mean(name, _KNOWN[sec])}")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


#: the shortest admin token taken (ledgerlog init writes 43 characters: 32 random bytes)
MIN_ADMIN_TOKEN = 16
#: setting -> (least, most) it may be (None: no bound); every source's value is checked
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "log.partitions": (1, MAX_PARTITIONS), "ingest.chunk": (1, 1_000_000), "fold.batch": (1, 10_000_000),
    "ingest.verify_workers": (0, 1024), "fold.workers": (0, 1024),
    "heads.interval": (0.05, 86_400), "retention.interval": (0.05, 86_400),
    "rocksdb.block_cache_mb": (0, 1 << 20), "rocksdb.write_buffer_mb": (1, 1 << 16),
    "rocksdb.max_open_files": (-1, 1 << 20),
    "http.port": (0, 65535), "http.max_body": (1, None), "http.ingest_max_body": (1, None),
    "http.ingest_rate": (0, None), "http.ingest_burst": (1, None), "http.ready_max_lag": (0, None),
    "http.keep_alive_timeout": (0, 86_400), "http.header_timeout": (0, 86_400), "http.body_timeout": (0, 86_400),
    "http.send_timeout": (0, 86_400),
    "http.max_connections": (0, None),
    "faucet.amount": (1, 2**63 - 1), "faucet.ip_burst": (1, None), "faucet.ip_interval": (0, None),
    "faucet.address_burst": (1, None), "faucet.address_interval": (0, None),
    "node.log_max_bytes": (0, None), "node.log_backups": (0, 1000),
    "snapshot.keep": (1, None), "retention.keep_heights": (0, None), "retention.max_heights": (1, None),
}
_ATTR = {key: attr for key, _env, attr, _typ, _doc in SETTINGS}


def _check_ranges(cfg: Config) -> None:
    for key, (lo, hi) in _RANGES.items():
        v = getattr(cfg, _ATTR[key])
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(f"{key} must be {bounds}, not {v}")
    if 0 < len(cfg.admin_token.strip()) < MIN_ADMIN_TOKEN:
        raise ConfigError(f"admin.token must be at least {MIN_ADMIN_TOKEN} characters: the admin API takes "
                          "unlimited tries, so a short token opens every admin action to anyone who can reach "
                          "the node; make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'` "
                          "(ledgerlog init writes such a token), or leave it empty to turn the admin API off")
    if any(not 32 <= ord(c) <= 126 for c in cfg.admin_token.strip()):
        raise ConfigError("admin.token must be printable ASCII: the Authorization header a client sends it in "
                          "is read as latin-1 and compared byte for byte, so other characters never match; make "
                          "one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if "*" in (o.strip() for o in cfg.http_allowed_origins.split(",")):
        raise ConfigError("http.allowed_origins must list the web origins by name (https://app.example): "
                          "\"*\" would let the pages of every site post ingest lines and call /rpc")
    if cfg.log_max_bytes and not cfg.log_backups:
        raise ConfigError("node.log_backups must be at least 1 while node.log_max_bytes rotates node.log "
                          "(with none kept it is never rotated and grows for ever); 0 for both leaves "
                          "rotation to logrotate")


def env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``env`` sets (non-empty ``LEDGERLOG_*`` variables of SETTINGS), by Config field."""
    return {attr: _convert(env[var].strip(), typ, var)
            for _key, var, attr, typ, _doc in SETTINGS if env.get(var, "").strip()}


def load_config(data_dir: str, env: Mapping[str, str], flags: Mapping[str, Any] | None = None,
                config_file: str | None = None) -> Config:
    """File (``config_file``, else ``<data_dir>/config.toml``), then environment, then flags
    (non-None values), into one Config."""
    values: dict[str, Any] = {"data_dir": data_dir, "config_file": config_file or ""}
    path = config_file or os.path.join(data_dir, "config.toml")
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        _check_names(doc, path)
        for key, _env, attr, typ, _doc in SETTINGS:
            sec, name = key.split(".")
            if name in doc.get(sec, {}):
                values[attr] = _convert(doc[sec][name], typ, f"{path} [{sec}] {name}")
        if "kafka" in doc:
            values["kafka"] = {str(k): str(v) for k, v in doc["kafka"].items()}
    values.update(env_values(env))
    known = {f.name for f in fields(Config)}
    for attr, v in (flags or {}).items():
        if v is not None and attr in known:
            values[attr] = v
    cfg = Config(**values)
    _check_ranges(cfg)
    _ = (cfg.snapshot_every_seconds, cfg.snapshot_keep_for_seconds)  # a malformed duration: ConfigError now
    try:
        configure_rocks(cfg.rocks_tuning())  # every store this process opens from now on
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg
