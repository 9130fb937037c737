"""Node facts from the command line: --version, a config file named by --config (or
LEDGERLOG_CONFIG) read instead of <data-dir>/config.toml, and status saying version and syncing."""
from __future__ import annotations

import subprocess

from clitools import LEDGERLOG, cli, cli_env, ok_json
from test_cli_errors import one_line_error

from ledgerlog import __version__


def test_version_is_printed_without_a_data_dir(tmp_path):
    proc = subprocess.run([LEDGERLOG, "--version"], capture_output=True, env=cli_env(), cwd=tmp_path, check=False)
    assert proc.returncode == 0 and proc.stdout.decode() == f"ledgerlog {__version__}\n"
    assert not (tmp_path / "data").exists()


def test_a_named_config_file_is_the_one_read(tmp_path):
    data, conf = tmp_path / "data", tmp_path / "elsewhere.toml"
    missing = cli(data, "--config", str(conf), "status")
    assert "elsewhere.toml" in one_line_error(missing, 2, "CONFIG")["error"]

    ok_json(cli(data, "--config", str(conf), "init"))
    assert conf.exists() and not (data / "config.toml").exists()  # init wrote the named file
    status = ok_json(cli(data, "--config", str(conf), "status"))
    assert status["version"] == __version__ and status["syncing"] is False and status["log_pubkey"]

    conf.write_text(conf.read_text().replace("chunk = 1000", "chunk = 0"))
    bad = cli(data, "--config", str(conf), "status")
    one_line_error(bad, 2, "CONFIG")
    from_env = cli(data, "status", env={**cli_env(), "LEDGERLOG_CONFIG": str(conf)})
    one_line_error(from_env, 2, "CONFIG")  # the environment names the same file
    ok_json(cli(data, "status"))  # without it: <data-dir>/config.toml, which does not exist
