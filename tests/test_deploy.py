"""The deployment files are valid: the compose file through ``docker-compose config``
(client-side, no engine needed), the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate, offline), Prometheus's config through promtool, and
every file they mount exists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
ENV = {"PUBLIC_IP": "203.0.113.10", "SFU_API_SECRET": "a" * 32, "SFU_TURN_SECRET": "b" * 32}


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no docker-compose client (tests/run.sh installs Debian's docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in ENV}
    return subprocess.run(
        [*command, "-p", "pysfu", "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


def test_compose_file_is_valid_and_complete():
    result = compose_config(ENV)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {
        "redis",
        "signaling1",
        "signaling2",
        "haproxy",
        "worker1",
        "worker2",
        "coturn",
        "prometheus",
        "grafana",
    }
    for name in ("worker1", "worker2"):
        env = services[name]["environment"]
        assert env["SFU_ANNOUNCED_IP"] == ENV["PUBLIC_IP"]
        low, high = int(env["SFU_UDP_PORT_MIN"]), int(env["SFU_UDP_PORT_MAX"])
        published = {int(p["published"]) for p in services[name]["ports"]}
        assert set(range(low, high + 1)) <= published, name
    turn_urls = json.loads(services["signaling1"]["environment"]["SFU_TURN_URLS"])
    assert turn_urls[0] == "turn:203.0.113.10:3478?transport=udp"
    # Every file mounted into a container is in the repository.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert Path(source).exists(), source


def test_compose_refuses_to_start_without_secrets():
    result = compose_config({"PUBLIC_IP": "203.0.113.10"})
    assert result.returncode != 0
    assert "SFU_API_SECRET" in result.stderr or "SFU_TURN_SECRET" in result.stderr


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, document)
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_kubernetes_manifests_validate_against_the_api_schemas():
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in _documents()}
    assert {
        ("Deployment", "signaling"),
        ("Service", "signaling"),
        ("DaemonSet", "worker"),
        ("Deployment", "redis"),
        ("DaemonSet", "coturn"),
    } <= kinds
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.utils.latest_version()
    for path, document in _documents():
        kubernetes_validate.validate(document, version, strict=True)
        assert document["metadata"].get("namespace", "pysfu") == "pysfu", path
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    broken["spec"] = {"replicass": 1}  # a typo the schema check must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_workers_are_scraped_and_use_the_host_network():
    documents = {(d["kind"], d["metadata"]["name"]): d for _, d in _documents()}
    worker = documents[("DaemonSet", "worker")]["spec"]["template"]
    assert worker["spec"]["hostNetwork"] is True
    config = documents[("ConfigMap", "pysfu-config")]["data"]
    assert worker["metadata"]["annotations"]["prometheus.io/port"] == config["SFU_METRICS_PORT"]
    signaling = documents[("Deployment", "signaling")]["spec"]["template"]
    assert signaling["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian prometheus not installed")
def test_prometheus_config_is_valid():
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_matches_the_dashboards():
    provisioning = ROOT / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (datasource,) = datasources["datasources"]
    for path in (ROOT / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"]
    providers = yaml.safe_load((provisioning / "dashboards" / "pysfu.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
