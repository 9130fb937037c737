"""The Kafka backend's connection config: one frozen object with the brokers, TLS, SASL, the other
librdkafka settings and ledgerlog's own options, built once at the edge from a chain's ``[kafka]``
table (librdkafka names) and passed in; the log's clients and the faust worker read it alike.

Keys of the table: ``ledgerlog.*`` are the backend's options (``topic_prefix``, ``replication``,
``transactional.id``, ``state_dir``, ``chain``, ``timeout.ms``, ``retries``, ``delete_records``); ``producer.X``,
``consumer.X`` and ``admin.X`` go to that client only (over every other setting); anything else
goes to every client. Imports nothing from confluent-kafka, so configs are built and checked
without it."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

from ..errors import ConfigError

__all__ = ["KafkaConfig", "PROTOCOLS", "ROLES", "Role", "Sasl", "Security", "Setting", "Tls"]

#: ``security.protocol`` values (librdkafka matches them case-insensitively).
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
Role = Literal["producer", "consumer", "admin"]
ROLES: tuple[Role, ...] = ("producer", "consumer", "admin")
_FALSE = ("false", "0", "no", "off", "none", "")
#: A librdkafka setting's value, as the clients take it.
Setting = str | int | float | bool


def _off(value: str | None) -> bool:
    """A librdkafka switch set to off (``none`` for the endpoint identification algorithm)."""
    return value is not None and value.strip().lower() in _FALSE


@dataclass(frozen=True)
class Tls:
    """Where the CA, the client certificate and key are, and whether the broker is verified."""

    ca_location: str = ""           # ssl.ca.location: a file or a directory
    ca_pem: str = ""                # ssl.ca.pem
    certificate_location: str = ""  # ssl.certificate.location
    key_location: str = ""          # ssl.key.location
    key_password: str = field(default="", repr=False)  # ssl.key.password
    check_hostname: bool = True     # ssl.endpoint.identification.algorithm (https, or none)
    verify_certificate: bool = True  # enable.ssl.certificate.verification

    def librdkafka(self) -> dict[str, str]:
        """The settings that differ from librdkafka's defaults, by their librdkafka names."""
        out = {k: v for k, v in (("ssl.ca.location", self.ca_location), ("ssl.ca.pem", self.ca_pem),
                                 ("ssl.certificate.location", self.certificate_location),
                                 ("ssl.key.location", self.key_location),
                                 ("ssl.key.password", self.key_password)) if v}
        if not self.check_hostname:
            out["ssl.endpoint.identification.algorithm"] = "none"
        if not self.verify_certificate:
            out["enable.ssl.certificate.verification"] = "false"
        return out


@dataclass(frozen=True)
class Sasl:
    """SASL credentials; ``mechanism`` None is librdkafka's default (GSSAPI)."""

    mechanism: str | None = None    # sasl.mechanisms (or sasl.mechanism), upper-cased
    username: str | None = None     # sasl.username
    password: str | None = field(default=None, repr=False)  # sasl.password
    kerberos_service_name: str | None = None  # sasl.kerberos.service.name
    kerberos_domain_name: str | None = None   # sasl.kerberos.domain.name (faust's GSSAPI only)

    def librdkafka(self) -> dict[str, str]:
        pairs = (("sasl.mechanisms", self.mechanism), ("sasl.username", self.username),
                 ("sasl.password", self.password), ("sasl.kerberos.service.name", self.kerberos_service_name),
                 ("sasl.kerberos.domain.name", self.kerberos_domain_name))
        return {k: v for k, v in pairs if v is not None}


#: The librdkafka names ``Security`` models; every other setting passes through as given.
_SECURITY_KEYS = frozenset({
    "security.protocol", "sasl.mechanisms", "sasl.mechanism", "sasl.username", "sasl.password",
    "sasl.kerberos.service.name", "sasl.kerberos.domain.name", "ssl.ca.location", "ssl.ca.pem",
    "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
    "ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification"})


@dataclass(frozen=True)
class Security:
    """TLS and SASL of a connection: ``protocol`` decides which of them are used."""

    protocol: str = "PLAINTEXT"
    tls: Tls = Tls()
    sasl: Sasl = Sasl()

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @classmethod
    def from_librdkafka(cls, conf: Mapping[str, str]) -> Security:
        """Read the security settings of ``conf`` (librdkafka names); others are ignored."""
        protocol = conf.get("security.protocol", "PLAINTEXT").strip().upper()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"[kafka] security.protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        mechanism = conf.get("sasl.mechanisms") or conf.get("sasl.mechanism")
        tls = Tls(ca_location=conf.get("ssl.ca.location", "").strip(), ca_pem=conf.get("ssl.ca.pem", ""),
                  certificate_location=conf.get("ssl.certificate.location", "").strip(),
                  key_location=conf.get("ssl.key.location", ""), key_password=conf.get("ssl.key.password", ""),
                  check_hostname=not _off(conf.get("ssl.endpoint.identification.algorithm", "https")),
                  verify_certificate=not _off(conf.get("enable.ssl.certificate.verification", "true")))
        sasl = Sasl(mechanism=mechanism.strip().upper() if mechanism else None,
                    username=conf.get("sasl.username"), password=conf.get("sasl.password"),
                    kerberos_service_name=conf.get("sasl.kerberos.service.name"),
                    kerberos_domain_name=conf.get("sasl.kerberos.domain.name"))
        return cls(protocol, tls, sasl)

    def librdkafka(self) -> dict[str, str]:
        """The settings by their librdkafka names (only those that differ from its defaults)."""
        out = {} if self.protocol == "PLAINTEXT" else {"security.protocol": self.protocol}
        return {**out, **self.sasl.librdkafka(), **self.tls.librdkafka()}


def _frozen(d: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class KafkaConfig:
    """Everything a Kafka log (or a faust worker) needs to reach and use the brokers."""

    bootstrap: str                                   # host:port[,host:port]
    security: Security = Security()                  # every client's TLS and SASL
    client: Mapping[str, str] = field(default_factory=lambda: _frozen({}))  # other settings, every client
    scoped: Mapping[Role, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    topic_prefix: str = ""           # prepended to every topic and group name on the broker
    replication: int = 1             # replication factor of the topics created
    timeout: float = 15.0            # seconds a broker operation may take (ledgerlog.timeout.ms)
    retries: int = 4                 # attempts at an operation failing with a transient error
    transactional_id: str | None = None  # None: derived from the chain (``resolved_transactional_id``)
    state_dir: str | None = None     # the local write-side state store; None: none is kept
    chain: str | None = None         # the chain served (its genesis hash): names the transactional id
    #: may ``ledgerlog prune`` send DeleteRecords to this cluster (ledgerlog.delete_records)? Off by
    #: default: Tansu 0.6 advertises the API but its broker panics on it (not yet implemented)
    delete_records: bool = False

    @classmethod
    def from_table(cls, bootstrap: str, table: Mapping[str, str]) -> KafkaConfig:
        """The config for brokers ``bootstrap`` from a ``[kafka]`` table; ConfigError if invalid."""
        own = {k[len("ledgerlog."):]: str(v) for k, v in table.items() if k.startswith("ledgerlog.")}
        common: dict[str, str] = {}
        scoped: dict[Role, dict[str, str]] = {}
        for k, v in table.items():
            if k.startswith("ledgerlog."):
                continue
            head, _, rest = k.partition(".")
            if head in ROLES and rest:
                scoped.setdefault(head, {})[rest] = v
            else:
                common[k] = v
        try:
            replication = int(own.get("replication", "1"))
            timeout = int(own.get("timeout.ms", "15000")) / 1000.0
            retries = max(1, int(own.get("retries", "4")))
        except ValueError as exc:
            raise ConfigError(f"[kafka] ledgerlog.replication, timeout.ms and retries are integers: {exc}") from exc
        if not 0 < timeout <= 3600 or replication < 1:  # -1 waited for ever, 0 failed every call
            raise ConfigError("[kafka] ledgerlog.timeout.ms must be between 1 and 3600000 and "
                              "ledgerlog.replication at least 1")
        prefix = own.get("topic_prefix", "")
        if prefix.startswith("__"):
            raise ConfigError(f"[kafka] ledgerlog.topic_prefix {prefix!r}: names starting with '__' are the "
                              "broker's own (its topics are never listed as the chain's)")
        return cls(bootstrap=bootstrap, security=Security.from_librdkafka(common),
                   client=_frozen({k: v for k, v in common.items() if k not in _SECURITY_KEYS}),
                   scoped=MappingProxyType({r: _frozen(s) for r, s in scoped.items()}),
                   topic_prefix=prefix, replication=replication, timeout=timeout,
                   retries=retries, transactional_id=own.get("transactional.id") or None,
                   state_dir=own.get("state_dir") or None, chain=own.get("chain") or None,
                   delete_records=not _off(own.get("delete_records", "false")))

    def replace(self, **changes: object) -> KafkaConfig:
        """A copy with some fields changed (e.g. another prefix, a state dir)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def librdkafka(self, role: Role, defaults: Mapping[str, Setting] | None = None) -> dict[str, Setting]:
        """One client's librdkafka settings: the brokers, security and shared settings, then
        ``defaults`` (the backend's choices for that client), then the client's own settings."""
        return {"bootstrap.servers": self.bootstrap, **self.security.librdkafka(), **self.client,
                **(defaults or {}), **self.scoped.get(role, {})}

    def security_for(self, role: Role) -> Security:
        """The TLS and SASL one client gets: every client's, with its own settings over them."""
        own = self.scoped.get(role, {})
        if not any(k in _SECURITY_KEYS for k in own):
            return self.security
        base = self.security.librdkafka()
        if "sasl.mechanism" in own:  # the singular alias of sasl.mechanisms
            base.pop("sasl.mechanisms", None)
        return Security.from_librdkafka({**base, **own})

    @property
    def resolved_transactional_id(self) -> str:
        """The producer's transactional id: one admitting node per chain, so it names the chain
        (its genesis hash) when known, and a second node on the same chain fences the first."""
        if self.transactional_id:
            return self.transactional_id
        basis = self.chain or (os.path.abspath(self.state_dir) if self.state_dir else self.bootstrap)
        return f"ledgerlog-{self.topic_prefix}{hashlib.blake2b(basis.encode(), digest_size=8).hexdigest()}"
