"""The Kafka connection config: built once from a chain's ``[kafka]`` table, it gives every
client the settings the table names (shared, then the backend's defaults, then the client's own),
types TLS and SASL, keeps secrets out of its repr and refuses invalid values. No broker needed."""
from __future__ import annotations

import pytest

from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import ConfigError
from ledgerlog.engine.log.kafka_config import KafkaConfig

TABLE = {"security.protocol": "sasl_ssl", "sasl.mechanism": "scram-sha-512", "sasl.username": "node",
         "sasl.password": "s3cret", "ssl.ca.location": "/etc/ca.pem", "client.id": "n1",
         "producer.linger.ms": "20", "consumer.sasl.username": "reader", "admin.client.id": "adm",
         "ledgerlog.topic_prefix": "t.", "ledgerlog.replication": "3", "ledgerlog.timeout.ms": "2500",
         "ledgerlog.retries": "0", "ledgerlog.state_dir": "/var/state"}


def test_the_table_is_typed():
    k = KafkaConfig.from_table("b1:9093,b2:9093", TABLE)
    assert (k.bootstrap, k.topic_prefix, k.replication, k.timeout, k.retries, k.state_dir) == \
        ("b1:9093,b2:9093", "t.", 3, 2.5, 1, "/var/state")
    assert k.security.protocol == "SASL_SSL" and k.security.uses_tls and k.security.uses_sasl
    assert (k.security.sasl.mechanism, k.security.sasl.username) == ("SCRAM-SHA-512", "node")
    assert k.security.tls.ca_location == "/etc/ca.pem" and k.security.tls.check_hostname
    assert "s3cret" not in repr(k)


def test_each_client_gets_shared_then_defaults_then_its_own():
    k = KafkaConfig.from_table("b:1", TABLE)
    prod = k.librdkafka("producer", {"linger.ms": 5, "acks": "all"})
    assert prod == {"bootstrap.servers": "b:1", "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
                    "sasl.username": "node", "sasl.password": "s3cret", "ssl.ca.location": "/etc/ca.pem",
                    "client.id": "n1", "linger.ms": "20", "acks": "all"}
    assert k.librdkafka("consumer")["sasl.username"] == "reader"
    assert k.librdkafka("admin")["client.id"] == "adm"
    assert not any(key.startswith("ledgerlog.") for key in k.librdkafka("admin"))
    assert k.security_for("consumer").sasl.username == "reader"
    assert k.security_for("producer") is k.security


def test_transactional_id_names_the_chain():
    a = KafkaConfig.from_table("b:1", {"ledgerlog.chain": "abc"})
    assert a.resolved_transactional_id == KafkaConfig.from_table("other:2", {"ledgerlog.chain": "abc"}).resolved_transactional_id
    assert a.resolved_transactional_id != a.replace(chain="abd").resolved_transactional_id
    assert a.replace(transactional_id="mine").resolved_transactional_id == "mine"


@pytest.mark.parametrize("table,match", [
    ({"ledgerlog.replication": "three"}, "integers"),
    ({"ledgerlog.timeout.ms": "1.5"}, "integers"),
    ({"security.protocol": "TLS"}, "security.protocol"),
    ({"ledgerlog.timeout.ms": "-1"}, "timeout.ms"),   # an infinite wait in confluent-kafka: a hang
    ({"ledgerlog.timeout.ms": "0"}, "timeout.ms"),    # every call failed, 'Broker transport failure'
    ({"ledgerlog.replication": "0"}, "replication"),
    ({"ledgerlog.topic_prefix": "__mine."}, "topic_prefix"),  # every topic hidden as the broker's own
])
def test_invalid_values_are_config_errors(table, match):
    with pytest.raises(ConfigError, match=match):
        KafkaConfig.from_table("b:1", table)


def test_config_builds_it_for_kafka_chains_only(tmp_path):
    assert Config(data_dir=str(tmp_path)).kafka_connection() is None
    k = Config(data_dir=str(tmp_path), log_url="kafka://b:9092", kafka={"ledgerlog.topic_prefix": "p."}).kafka_connection()
    assert k is not None and (k.bootstrap, k.topic_prefix) == ("b:9092", "p.")


def test_a_client_setting_librdkafka_refuses_is_a_config_error_at_open():
    """It was INTERNAL (a KafkaException from the admin client's constructor)."""
    from ledgerlog.engine.log.kafka import KafkaLog

    with pytest.raises(ConfigError, match=r"socket\.timeout\.ms"):
        KafkaLog("127.0.0.1:1", **{"socket.timeout.ms": "abc"})
