"""The alert rules, their promtool unit tests, and the Grafana dashboard, checked with
Debian's promtool; every metric they name is one Beatkeeper exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from beatkeeper.operator.metrics import OperatorMetrics, StateCollector
from beatkeeper_beat import metrics as beat_metrics
from beatkeeper_devenv.helm import ensure_helm
from beatkeeper_devenv.settings import DevSettings
from beatkeeper_worker import metrics as worker_metrics

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "charts" / "beatkeeper" / "files"
RULES = FILES / "prometheus-rules.yaml"
DASHBOARD = FILES / "grafana-dashboard.json"
NAME = re.compile(r"\bbeatkeeper_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm(DevSettings.from_env(os.environ))


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: make system-deps installs Debian's prometheus package"
    return found


def run(promtool: str, *args: str, cwd: Path | None = None) -> str:
    out = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def exported() -> set[str]:
    """Every sample name the operator, beat and workers can expose."""
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    task = {
        "status": {
            "nextScheduleTime": "2026-03-01T00:00:00Z",
            "lastScheduleTime": "2026-03-01T00:00:00Z",
            "lastSuccessfulTime": "2026-03-01T00:00:00Z",
            "conditions": [{"type": "Stalled", "status": "True", "reason": "RunsFailing"}],
        }
    }
    pool = {"backlog": 1, "minReplicas": 0, "maxReplicas": 3}
    registry.register(
        StateCollector(lambda: {("ns", "t"): task}, lambda: {("ns", "p"): pool}, lambda: 1,
                       lambda: (0, 0, 0))
    )  # fmt: skip
    families = [*registry.collect()]
    worker_metrics.worker()
    beat_metrics.beat()
    from prometheus_client import REGISTRY

    families += [f for f in REGISTRY.collect() if f.name.startswith("beatkeeper_")]
    names = set()
    for family in families:
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
        }.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    assert "SUCCESS: 7 rules found" in run(promtool, "check", "rules", str(RULES))


def test_each_alert_fires_on_a_bad_series_and_stays_quiet_on_a_healthy_one(promtool: str) -> None:
    tests = REPO / "tests" / "prometheus" / "rules_test.yaml"
    assert "SUCCESS" in run(promtool, "test", "rules", tests.name, cwd=tests.parent)
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]}  # fmt: skip
    tested = {case["alertname"] for test in yaml.safe_load(tests.read_text())["tests"]
              for case in test["alert_rule_test"]}  # fmt: skip
    assert tested == alerts  # every alert has its test


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"beatkeeper:panel_{i}", "expr": expr.replace("$namespace", ".*")}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in run(promtool, "check", "rules", str(path))


def names_in(text: str) -> set[str]:
    return set(NAME.findall(text))


def test_the_dashboard_and_the_rules_name_only_exported_metrics() -> None:
    known = exported()
    used_by_dashboard = set().union(*(names_in(expr) for _, expr in dashboard_queries()))
    used_by_rules = names_in(RULES.read_text())
    assert used_by_dashboard - known == set()
    assert used_by_rules - known == set()
    # And the dashboard shows something of each program.
    for prefix in ("beatkeeper_worker_", "beatkeeper_beat_", "beatkeeper_operator_",
                   "beatkeeper_pool_", "beatkeeper_scheduledtask_"):  # fmt: skip
        assert any(name.startswith(prefix) for name in used_by_dashboard), prefix


def test_metric_names_follow_prometheus_conventions() -> None:
    for name in exported():
        assert name.startswith("beatkeeper_")
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if "seconds" in name:
            assert re.search(r"_seconds(_bucket|_count|_sum)?$", name), name


def test_the_chart_wraps_the_same_rules_and_dashboard(helm: Path) -> None:
    args = [
        "template", "t", str(REPO / "charts" / "beatkeeper"),
        "--set", "monitoring.prometheusRule.enabled=true",
        "--set", "monitoring.grafanaDashboard.enabled=true",
    ]  # fmt: skip
    out = subprocess.run([str(helm), *args], capture_output=True, text=True, check=True).stdout
    docs = {
        d["kind"]: d
        for d in yaml.safe_load_all(out)
        if d and (d["kind"], d["metadata"]["name"]) in
        {("PrometheusRule", "t-beatkeeper"), ("ConfigMap", "t-beatkeeper-dashboard")}
    }  # fmt: skip
    assert docs["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())
    board = docs["ConfigMap"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["beatkeeper.json"]) == json.loads(DASHBOARD.read_text())
