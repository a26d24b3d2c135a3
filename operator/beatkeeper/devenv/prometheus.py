"""A real Prometheus (Debian's `prometheus`) on loopback, scraping Beatkeeper's endpoints.

Used by the end-to-end metrics test and by `beatkeeper demo --prometheus`. It
scrapes every second, keeps its data in `workdir`, and loads the project's alert
rules, so the rules are evaluated against the live series too.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from beatkeeper.devenv.cluster import free_port
from beatkeeper.devenv.processes import Component, Supervisor, wait_until

RULES = Path(__file__).resolve().parents[3] / "charts" / "beatkeeper" / "files"
RULES_FILE = RULES / "prometheus-rules.yaml"


class PrometheusMissing(RuntimeError):
    pass


def config(targets: Mapping[str, Sequence[str]], rules: Path | None) -> dict[str, Any]:
    """A scrape config with one job per component; `targets` are host:port addresses."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)] if rules else [],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in targets.items()
        ],
    }


def start_prometheus(
    supervisor: Supervisor,
    workdir: Path,
    targets: Mapping[str, Sequence[str]],
    *,
    executable: str = "prometheus",
    port: int | None = None,
    rules: Path | None = RULES_FILE,
) -> tuple[Component, str]:
    """Start Prometheus on 127.0.0.1; return the component and its base URL."""
    if shutil.which(executable) is None:
        raise PrometheusMissing(
            f"{executable} not found; install it with: apt-get install prometheus"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config(targets, rules)))
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    component = supervisor.start(
        "prometheus",
        [
            executable,
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
    )
    wait_until(component, lambda: _ready(url), timeout=60)
    return component, url


# S310 below: every URL is the http:// one start_prometheus built.


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant PromQL query; the result vector."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(address, timeout=10) as answer:  # noqa: S310
        body = json.loads(answer.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def value(url: str, expr: str) -> float | None:
    """The single value of an instant query (None when the vector is empty)."""
    result = query(url, expr)
    if not result:
        return None
    if len(result) > 1:
        raise RuntimeError(f"{expr}: {len(result)} series, expected one")
    return float(result[0]["value"][1])


def targets_up(url: str) -> dict[str, str]:
    """Each scrape target's job and health (up, down, unknown)."""
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as answer:  # noqa: S310
        body = json.loads(answer.read())
    return {t["labels"]["job"]: t["health"] for t in body["data"]["activeTargets"]}
