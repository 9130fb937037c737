"""The Kafka worker hands faust the chain's TLS/SASL settings: the connection config built from
the ``[kafka]`` table (librdkafka names) mapped to faust's ``broker_credentials``
(streams/faust_worker.py). No broker is needed: the mapping, and what faust's aiokafka driver
makes of it, are checked directly."""
from __future__ import annotations

import datetime
import ssl

import certifi
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import ConfigError
from ledgerlog.engine.genesis import Genesis, dev_genesis
from ledgerlog.engine.log.kafka_config import KafkaConfig
from ledgerlog.streams.faust_worker import FoldEngine, build_app
from ledgerlog.streams.faust_worker import broker_credentials as _credentials
from ledgerlog.streams.faust_worker import ssl_context as _ssl_context

CA = certifi.where()


def broker_credentials(table: dict[str, str]):
    """The credentials for a ``[kafka]`` table, through the connection config built from it."""
    return _credentials(KafkaConfig.from_table("b1:9093", table))


def ssl_context(table: dict[str, str]) -> ssl.SSLContext:
    return _ssl_context(KafkaConfig.from_table("b1:9093", table).security.tls)


def test_plaintext_gives_no_credentials():
    assert broker_credentials({}) is None
    assert broker_credentials({"security.protocol": "plaintext", "ledgerlog.replication": "3"}) is None
    # SASL keys without a SASL protocol are ignored, as librdkafka does
    assert broker_credentials({"sasl.username": "u", "sasl.password": "p"}) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_ssl(mechanism):
    creds = broker_credentials({"security.protocol": "SASL_SSL", "sasl.mechanisms": mechanism,
                                "sasl.username": "ledgerlog", "sasl.password": "s3cret", "ssl.ca.location": CA})
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("ledgerlog", "s3cret", mechanism.upper())
    assert creds.protocol.value == "SASL_SSL"
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED and creds.ssl_context.check_hostname
    assert len(creds.ssl_context.get_ca_certs()) > 10  # the CA file was loaded
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == mechanism.upper()
    assert auth["sasl_plain_username"] == "ledgerlog" and auth["sasl_plain_password"] == "s3cret"
    assert auth["ssl_context"] is creds.ssl_context


def test_sasl_plaintext_and_the_singular_key():
    creds = broker_credentials({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                                "sasl.username": "u", "sasl.password": ""})
    assert isinstance(creds, faust.SASLCredentials) and creds.ssl_context is None
    assert creds.protocol.value == "SASL_PLAINTEXT" and creds.password == ""
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SASL_PLAINTEXT"


def test_gssapi_is_librdkafkas_default_mechanism():
    creds = broker_credentials({"security.protocol": "SASL_SSL", "sasl.kerberos.service.name": "kfk"})
    assert isinstance(creds, faust.GSSAPICredentials)
    assert creds.kerberos_service_name == "kfk" and creds.protocol.value == "SASL_SSL"


def test_ssl_only():
    creds = broker_credentials({"security.protocol": "SSL", "ssl.ca.location": CA})
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    # no CA given: the system's trust store, verification on
    ctx = broker_credentials({"security.protocol": "SSL"}).context
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_consumer_prefix_overrides_and_other_clients_keys_are_ignored():
    creds = broker_credentials({"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
                                "sasl.username": "shared", "sasl.password": "a",
                                "consumer.sasl.username": "worker", "producer.sasl.username": "nope",
                                "admin.sasl.password": "nope", "ssl.ca.location": CA})
    assert (creds.username, creds.password) == ("worker", "a")


def test_verification_switches():
    ctx = ssl_context({"ssl.ca.location": CA, "ssl.endpoint.identification.algorithm": "none"})
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    ctx = ssl_context({"enable.ssl.certificate.verification": "false"})
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_NONE


def test_ca_directory_and_pem(tmp_path):
    with open(CA, encoding="ascii") as f:
        pem = f.read()
    (tmp_path / "ca.pem").write_text(pem)
    assert ssl_context({"ssl.ca.pem": pem}).get_ca_certs()
    ssl_context({"ssl.ca.location": str(tmp_path)})  # a directory is a capath (loaded lazily)


def test_client_certificate(tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "ledgerlog")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    ctx = ssl_context({"ssl.certificate.location": str(tmp_path / "c.pem"),
                       "ssl.key.location": str(tmp_path / "k.pem"), "ssl.key.password": "pw"})
    assert isinstance(ctx, ssl.SSLContext)
    with pytest.raises(ConfigError, match="TLS"):
        ssl_context({"ssl.certificate.location": str(tmp_path / "c.pem"),
                     "ssl.key.location": str(tmp_path / "k.pem"), "ssl.key.password": "wrong"})


@pytest.mark.parametrize("conf,match", [
    ({"security.protocol": "TLS"}, "security.protocol"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN"}, "sasl.username"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "OAUTHBEARER"}, "not supported"),
    ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "TLS"),
])
def test_bad_settings_are_config_errors(conf, match):
    with pytest.raises(ConfigError, match=match):
        broker_credentials(conf)


def test_the_faust_app_gets_them(tmp_path):
    genesis = Genesis.from_dict(dev_genesis(str(tmp_path / "keys")))
    kafka = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "u",
             "sasl.password": "p", "ssl.ca.location": CA}
    cfg = Config(data_dir=str(tmp_path / "data"), log_url="kafka://b1:9093,b2:9093", kafka=kafka)
    engine = FoldEngine(None, None, genesis, str(tmp_path / "proj"))  # type: ignore[arg-type]  # never started
    app = build_app(cfg, genesis, engine, worker_dir=str(tmp_path / "w"), url="http://127.0.0.1:1")
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials) and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.protocol.value == "SASL_SSL" and creds.username == "u"
    plain = build_app(Config(data_dir=str(tmp_path / "data"), log_url="kafka://b1:9092"), genesis, engine,
                      worker_dir=str(tmp_path / "w2"), url="http://127.0.0.1:1")
    assert plain.conf.broker_credentials is None
