"""The deployment files are valid: the compose file through ``docker-compose config``
(client-side, no engine needed), the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate, offline), Prometheus's config through promtool, and
every file they mount exists; and what they configure is no development server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sfu.config import Settings, exposure_problem

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
        published = {(int(p["published"]), p["protocol"]) for p in services[name]["ports"]}
        assert published == {
            (int(env["SFU_UDP_PORT"]), "udp"),
            (int(env["SFU_TCP_PORT"]), "tcp"),
        }, name
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


def test_workers_are_scraped_and_map_their_two_media_ports():
    documents = {(d["kind"], d["metadata"]["name"]): d for _, d in _documents()}
    worker = documents[("DaemonSet", "worker")]["spec"]["template"]
    assert "hostNetwork" not in worker["spec"]
    config = documents[("ConfigMap", "pysfu-config")]["data"]
    (container,) = worker["spec"]["containers"]
    host_ports = {(p["hostPort"], p["protocol"]) for p in container["ports"] if "hostPort" in p}
    assert host_ports == {
        (int(config["SFU_UDP_PORT"]), "UDP"),
        (int(config["SFU_TCP_PORT"]), "TCP"),
    }
    assert all(p["containerPort"] == p["hostPort"] for p in container["ports"] if "hostPort" in p)
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


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process started with ``env`` (and nothing else) reads."""
    for name in list(os.environ):
        if name.startswith("SFU_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return Settings()


def test_compose_signaling_nodes_are_not_development_servers(monkeypatch):
    result = compose_config(ENV)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("signaling1", "signaling2"):
        env = services[name]["environment"]
        settings = settings_from(env, monkeypatch)
        assert exposure_problem(settings) is None, name
        assert not settings.dev and not settings.dev_tokens, name
        # Only haproxy reaches a node: its X-Forwarded-For names the client counted.
        assert settings.forwarded_allow_ips == "*", name
    assert "option forwardfor" in (DEPLOY / "haproxy.cfg").read_text()


def test_kubernetes_placeholder_secret_cannot_go_live(monkeypatch):
    documents = {(d["kind"], d["metadata"]["name"]): d for _, d in _documents()}
    env = {
        **documents[("ConfigMap", "pysfu-config")]["data"],
        **documents[("Secret", "pysfu-secrets")]["stringData"],
    }
    settings = settings_from(env, monkeypatch)
    assert not settings.dev and not settings.dev_tokens
    assert "at least 32" in (exposure_problem(settings) or "")
    real = settings_from({**env, "SFU_API_SECRET": "a" * 32}, monkeypatch)
    assert exposure_problem(real) is None


def test_image_and_quickstart_modes():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    env = [line for line in dockerfile.splitlines() if line.startswith("ENV ")]
    assert any("SFU_HOST=0.0.0.0" in line for line in env)  # reachable from outside
    assert not any("SFU_API_SECRET" in line or "SFU_DEV" in line for line in env)
    # The quickstart is a demo for a newcomer: a development server, said so.
    assert "exec .venv/bin/sfu serve --dev" in (DEPLOY / "quickstart.sh").read_text()
