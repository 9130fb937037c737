"""The monitoring assets in ops/monitoring and ops/deploy: the Grafana dashboard is valid dashboard
JSON, the Prometheus rules are valid rule groups, and every metric name their PromQL uses is one a
running node exports (scraped from /metrics after a generated history); every exported name is
``ledgerlog_``-prefixed and ends in its base unit, and where promtool is installed the metric text
passes ``promtool check metrics`` and the rules ``promtool check rules``; the systemd unit and the
logrotate file are well formed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from clitools import REPO
from nodetools import ingest_all, observed_node, parse_metrics

ROOT = REPO
DASHBOARD = ROOT / "ledgerlog" / "ops" / "monitoring" / "grafana-dashboard.json"
ALERTS = ROOT / "ledgerlog" / "ops" / "monitoring" / "alerts.yml"
UNIT = ROOT / "ledgerlog" / "ops" / "deploy" / "ledgerlog.service"
LOGROTATE = ROOT / "ledgerlog" / "ops" / "deploy" / "logrotate"
WORKER_UNIT = ROOT / "ledgerlog" / "ops" / "deploy" / "ledgerlog-stream-worker@.service"

#: Metrics that are not the node's: Prometheus' own scrape health, and node_exporter's.
EXTERNAL = re.compile(r"^(up|node_[a-z0-9_]+)$")
#: Metrics `ledgerlog audit --metrics-file` writes for node_exporter's textfile collector (the
#: alerts' comment and ops/monitoring/README.md say so), not the node's /metrics.
AUDIT_TEXTFILE = {"ledgerlog_audit_failed"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "inf", "nan", "atan2", "start", "end"}
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


# -- PromQL -------------------------------------------------------------------------------------
def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions, aggregation
    keywords, label names (in {...}, by/without/on/ignoring/group_x (...)), ranges, durations or
    numbers. Grafana's $variables are ignored."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\{[^{}]*\}", " ", s)                                          # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)                                        # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)                                          # Grafana variables
    s = re.sub(r"(?<![\w:])(0x[0-9a-fA-F]+|\d+\.?\d*(e[+-]?\d+)?|\.\d+)", " ", s)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS or _DURATION.match(word):
            continue
        names.add(word)
    return names


def balanced(expr: str) -> bool:
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in s:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_promql_metric_names() -> None:
    assert promql_metric_names('up{job="ledgerlog"} == 0') == {"up"}
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (instance, route, le) (rate(ledgerlog_http_request_duration_seconds_bucket'
        '{route!="/v1/ingest"}[5m]))) > 1') == {"ledgerlog_http_request_duration_seconds_bucket"}
    assert promql_metric_names(
        'sum(rate(a_total{status=~"5..",x="by(y)"}[$__rate_interval])) / clamp_min(sum(rate(b_total[1h] offset 5m)), 1e-9)'
        ' > 3 * c') == {"a_total", "b_total", "c"}
    assert promql_metric_names("1 - x_bytes / on (instance) group_left (job) y_bytes > 0.8") == {"x_bytes", "y_bytes"}
    assert promql_metric_names("topk(10, sum without (job) (rate(z[5m])) * 3600)") == {"z"}


# -- the files ----------------------------------------------------------------------------------
def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        out.extend(t["expr"] for t in panel.get("targets", []))
        for sub in panel.get("panels", []):
            out.extend(t["expr"] for t in sub.get("targets", []))
    return out


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_grafana_dashboard_is_valid() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    assert dash.get("id") is None  # importable into any Grafana
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert re.fullmatch(r"label_values\((\w+), *instance\)", variables["instance"]["definition"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    graphs = 0
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        graphs += 1
        assert p["type"] in ("timeseries", "stat", "gauge", "table", "bargauge"), p["type"]
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"] and balanced(t["expr"]), (p["title"], t)
    assert graphs >= 20


def test_alert_rules_are_valid_prometheus_rule_groups() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names))
    names = []
    for g in doc["groups"]:
        assert set(g) <= {"name", "interval", "rules", "limit"} and g["rules"]
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", r["alert"])
            assert isinstance(r["expr"], str) and balanced(r["expr"]), r["alert"]
            if "for" in r:
                assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", r["for"]), r
            assert r["labels"]["severity"] in ("critical", "warning", "info")
            assert r["annotations"]["summary"]
            names.append(r["alert"])
    assert len(names) == len(set(names))
    # the alerts the operators asked for
    exprs = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}
    wanted = {
        "node down": lambda e: re.search(r"\bup\b.*== *0", e),
        "no new block": lambda e: "ledgerlog_last_block_age_seconds" in e,
        "projection lag": lambda e: "ledgerlog_projection_lag_seconds" in e,
        "mempool backlog": lambda e: "ledgerlog_mempool_transactions" in e,
        "disk above 80%": lambda e: "ledgerlog_storage_capacity_bytes" in e and "0.8" in e,
        "http 5xx": lambda e: 'status=~"5.."' in e,
        "p95 latency": lambda e: "histogram_quantile(0.95" in e and "ledgerlog_http_request_duration_seconds_bucket" in e,
        "rejected spike": lambda e: "ledgerlog_events_rejected_total" in e,
        "faucet low": lambda e: "ledgerlog_faucet_balance" in e,
        "storage not writable": lambda e: re.search(r"ledgerlog_storage_writable *== *0", e),
        "storage errors": lambda e: "ledgerlog_storage_errors_total" in e,
        "tree head stale": lambda e: re.search(r"ledgerlog_tree_head_age_seconds *> *60\b", e),
        "audit failed": lambda e: re.search(r"ledgerlog_audit_failed *> *0\b", e),
        "settlement stall": lambda e: "ledgerlog_energy_last_settlement_age_seconds" in e
        and "ledgerlog_energy_unsettled_joules" in e,
        "provider fulfilment time": lambda e: "ledgerlog_energy_provider_unsettled_age_seconds" in e,
    }
    for what, test in wanted.items():
        assert any(test(e) for e in exprs.values()), f"no alert for {what}"


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> str:
    """/metrics of a node after a generated history (every series present)."""
    with observed_node(tmp_path_factory.mktemp("scrape")) as w:
        ingest_all(w["client"], w["lines"])
        assert w["client"].get("/v1/status").status_code == 200
        return str(w["client"].get("/metrics").text)


def test_every_metric_the_dashboard_and_alerts_use_is_exported(scraped) -> None:
    used: dict[str, set[str]] = {}
    for expr in dashboard_exprs():
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add("dashboard")
    for rule in alert_rules():
        for name in promql_metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    dash = json.loads(DASHBOARD.read_text())
    for v in dash["templating"]["list"]:
        m = re.match(r"label_values\((\w+)", v.get("definition", ""))
        if m:
            used.setdefault(m.group(1), set()).add(f"variable {v['name']}")
    external = {n for n in used if EXTERNAL.match(n)}
    assert external == {"up", "node_textfile_mtime_seconds"}  # explicitly not ours
    assert set(used) & AUDIT_TEXTFILE == AUDIT_TEXTFILE
    readme = (ROOT / "ledgerlog" / "ops" / "monitoring" / "README.md").read_text()
    assert all(f"`{n}`" in readme and f"`{n}`" in ALERTS.read_text() for n in AUDIT_TEXTFILE)
    ours = set(used) - external - AUDIT_TEXTFILE
    assert len(ours) >= 25, sorted(ours)
    names = parse_metrics(scraped)
    missing = {n: sorted(used[n]) for n in sorted(ours) if n not in names}
    assert not missing, f"used but not exported: {missing}"


# -- metric names ---------------------------------------------------------------------------------
#: names before issue 16 (no prefix, or no unit at the end); none may come back beside the new ones
OLD_NAMES = {"energy_providers_count", "energy_avg_price", "energy_kwh_traded_total", "energy_settlements_total",
             "oracle_reading_latency_seconds", "ledgerlog_seconds_since_last_block", "ledgerlog_mempool_size"}
#: units Prometheus does not use (it wants base units: seconds, bytes, joules, ...)
NON_BASE = re.compile(r"_(milliseconds|microseconds|nanoseconds|minutes|hours|days|kilobytes|megabytes|"
                      r"gigabytes|kwh|kilowatt_hours|watt_hours|ms|us|ns|sec|kb|mb|gb)(_|$)")


def families(text: str) -> dict[str, str]:
    """name -> type of each metric family in Prometheus text"""
    return {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def test_metric_names_are_prefixed_and_end_in_their_units(scraped) -> None:
    fams = families(scraped)
    assert len(fams) >= 30, fams
    assert not {n for n in fams if not n.startswith("ledgerlog_")}, "every metric is ledgerlog_*"
    assert not {n for n, t in fams.items() if t == "counter" and not n.endswith("_total")}
    assert not {n for n in fams if NON_BASE.search(n.removesuffix("_per_kwh"))}, "base units only"
    assert not {n for n in fams if re.search(r"_seconds_|_bytes_(?!total$)", n)}, "the unit ends the name"
    assert not (OLD_NAMES & set(fams)) and not any(re.search(rf"\b{n}\b", scraped) for n in OLD_NAMES)
    readme = ROOT / "ledgerlog" / "ops" / "monitoring" / "README.md"
    table = "\n".join(ln for ln in readme.read_text().splitlines() if ln.startswith("|"))  # not the renames' note
    for path, text in ((DASHBOARD, DASHBOARD.read_text()), (ALERTS, ALERTS.read_text()), (readme, table)):
        assert not [n for n in OLD_NAMES if re.search(rf"\b{n}\b", text)], path


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return found


def test_promtool_check_metrics(scraped) -> None:
    proc = subprocess.run([promtool(), "check", "metrics"], input=scraped, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_promtool_check_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_promtool_finds_what_it_should() -> None:
    """The promtool checks above can fail: a bad name and a bad rule are reported."""
    bad = "# HELP energy_providers_count x\n# TYPE energy_providers_count gauge\nenergy_providers_count 1\n"
    proc = subprocess.run([promtool(), "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "_count" in proc.stdout + proc.stderr
    rules = Path(__import__("tempfile").mkdtemp()) / "bad.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(x[5m]\n")
    proc = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections: key -> values, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        key, _, value = line.partition("=")
        assert current and key and _, line
        sections[current].setdefault(key, []).append(value)
    return sections


def test_systemd_unit() -> None:
    text = UNIT.read_text()
    sections = unit_sections(text)
    svc = sections["Service"]
    assert set(sections) == {"Unit", "Service", "Install"}
    assert svc["Type"] == ["simple"] and svc["KillSignal"] == ["SIGTERM"] and svc["Restart"] == ["on-failure"]
    assert re.fullmatch(r"\S*ledgerlog --data-dir \S+ run( .*)?", svc["ExecStart"][0])
    # flags would win over config.toml and the LEDGERLOG_HTTP_* the unit says to set
    assert "--host" not in svc["ExecStart"][0] and "--port" not in svc["ExecStart"][0]
    assert int(svc["TimeoutStopSec"][0]) >= 30
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths"):
        assert hardening in svc
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # reopens logs/node.log
    data_dir = re.search(r"--data-dir (\S+)", svc["ExecStart"][0]).group(1)
    assert any(data_dir.startswith(p) for p in svc["ReadWritePaths"][0].split())
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit was checked by the parser above only")
    import sys
    unit = Path(sys.executable).parent / "ledgerlog"
    copy = Path(__import__("tempfile").mkdtemp()) / "ledgerlog.service"
    copy.write_text(text.replace(svc["ExecStart"][0].split()[0], str(unit)))
    proc = subprocess.run([analyze, "verify", str(copy)], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_stream_worker_unit() -> None:
    """The template unit runs `ledgerlog stream-worker` (not `worker`, the pool query) per instance."""
    text = WORKER_UNIT.read_text()
    sections = unit_sections(text)
    svc = sections["Service"]
    assert set(sections) == {"Unit", "Service", "Install"}
    assert re.fullmatch(r"\S*ledgerlog --data-dir \S+ stream-worker --worker-dir \S*%i( .*)?", svc["ExecStart"][0])
    assert svc["KillSignal"] == ["SIGTERM"] and svc["Restart"] == ["on-failure"]
    assert svc["RestartPreventExitStatus"] == ["2"]
    worker_dir = re.search(r"--worker-dir (\S+)", svc["ExecStart"][0]).group(1)
    assert any(worker_dir.startswith(p) for p in svc["ReadWritePaths"][0].split())
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit was checked by the parser above only")
    import sys
    copy = Path(__import__("tempfile").mkdtemp()) / "ledgerlog-stream-worker@.service"
    copy.write_text(text.replace(svc["ExecStart"][0].split()[0], str(Path(sys.executable).parent / "ledgerlog")))
    proc = subprocess.run([analyze, "verify", str(copy)], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_logrotate_file() -> None:
    text = LOGROTATE.read_text()
    body = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("#"))
    m = re.search(r"^(\S+node\.log)\s*\{(.*)\}\s*$", body.strip(), re.DOTALL | re.MULTILINE)
    assert m, body
    directives = [ln.strip() for ln in m.group(2).splitlines() if ln.strip()]
    assert "postrotate" in directives and "endscript" in directives
    script = directives[directives.index("postrotate") + 1:directives.index("endscript")]
    assert any("reload ledgerlog" in s or "kill -HUP" in s for s in script)  # SIGHUP reopens the file
    unit_data = re.search(r"--data-dir (\S+)", UNIT.read_text()).group(1)
    assert m.group(1) == f"{unit_data}/logs/node.log"
    if shutil.which("logrotate"):
        state = Path(__import__("tempfile").mkdtemp()) / "state"
        conf = state.with_name("conf")
        conf.write_text(text.replace(m.group(1), str(state.with_name("node.log"))).replace("su ledgerlog ledgerlog", ""))
        proc = subprocess.run(["logrotate", "-d", "-s", str(state), str(conf)], check=False, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
