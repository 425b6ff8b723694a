"""The deployment examples point at what the server really serves."""

from __future__ import annotations

import yaml

from gptoss.observability.metrics import Metrics
from gptoss.routes import find_route
from gptoss.settings import Settings
from tests.conftest import REPO


def _docs() -> dict[str, dict]:
    docs = yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "gpt-oss.yaml").read_text())
    return {d["kind"]: d for d in docs}


def test_kubernetes_probes_are_our_probe_routes():
    container = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        route = find_route(container[probe]["httpGet"]["path"])
        assert route is not None and route.access == "probe", probe
    assert container["ports"][0]["containerPort"] == 8000


def test_kubernetes_keys_file_is_the_mounted_secret():
    pod = _docs()["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    mount = container["volumeMounts"][0]
    assert env["GPTOSS_KEYS_FILE"].startswith(mount["mountPath"] + "/")
    assert pod["volumes"][0]["secret"]["defaultMode"] & 0o077 == 0  # no warning about a readable keys file
    assert pod["terminationGracePeriodSeconds"] > Settings().shutdown_grace


def test_hpa_scales_on_a_metric_we_export():
    import prometheus_client

    names = {fam._name for fam in vars(Metrics.create(prometheus_client.CollectorRegistry())).values()}
    metric = _docs()["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in names
    assert metric in _docs()["ConfigMap"]["data"]["rules.yaml"]
    monitor = _docs()["ServiceMonitor"]["spec"]["endpoints"][0]
    assert monitor["path"] == "/metrics" and find_route("/metrics").access == "metrics" and "authorization" in monitor
