"""deploy/kubernetes: valid against the Kubernetes API schemas, and fitting the engine.

Built-in kinds are validated offline, strictly (unknown fields fail), by
kubernetes-validate, which ships the API's JSON schemas, for an older and a
recent Kubernetes version. The Prometheus Operator's kinds (PodMonitor,
PrometheusRule) are not in those schemas: they are checked field by field,
and the PrometheusRule's groups must equal those of prometheus/*.yml. The
values are checked against the engine: the /dev/shm emptyDir against
scripts/shm_size.py for the ConfigMap's settings, the grace period against
--graceful-timeout, probes and ports against the image's listen addresses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy_helpers import DOCKERFILE, ROOT, image_env, k8s_bytes, shm_figure
from engine.config import BY_NAME, resolve

HERE = ROOT / "deploy" / "kubernetes"
GEN = ROOT / "scripts" / "gen_k8s_rules.py"
CRD_GROUP = "monitoring.coreos.com/"
# An older and a recent release; the grpc probe type needs 1.27 or later.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def manifests() -> dict[str, dict]:
    """File name → its one YAML document (every file holds exactly one)."""
    out = {}
    for path in sorted(HERE.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert len(docs) == 1, f"{path.name}: {len(docs)} documents"
        out[path.name] = docs[0]
    return out


def by_kind(kind: str) -> dict:
    [doc] = [d for d in manifests().values() if d.get("kind") == kind]
    return doc


def statefulset() -> dict:
    return by_kind("StatefulSet")


def pod() -> dict:
    return statefulset()["spec"]["template"]["spec"]


def engine() -> dict:
    [c] = pod()["containers"]
    return c


def config_toml(tmp_path: Path) -> Path:
    """The ConfigMap's TOML file, written out, at the name the container reads."""
    args = engine()["args"]
    path = args[args.index("--config") + 1]
    [mount] = [m for m in engine()["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    [vol] = [v for v in pod()["volumes"] if v["name"] == mount["name"]]
    cm = by_kind("ConfigMap")
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    out = tmp_path / key
    out.write_text(cm["data"][key])
    return out


def engine_env() -> dict[str, str]:
    """The ENGRAM_ variables the engine sees: the image's, then the pod spec's."""
    env = {k: v for k, v in image_env().items() if k.startswith("ENGRAM_")}
    env.update({e["name"]: e["value"] for e in engine().get("env", []) if e["name"].startswith("ENGRAM_")})
    return env


def engine_config(tmp_path: Path):
    return resolve(None, "run", env=engine_env(), toml_path=str(config_toml(tmp_path)))


def named_port(name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    [p] = [p for p in engine()["ports"] if p["name"] == name_or_number]
    return p["containerPort"]


def listen_port(env_name: str) -> int:
    return int(engine_env()[env_name].rpartition(":")[2])


# -- schemas ----------------------------------------------------------------------
def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(n for n in manifests() if n != "kustomization.yaml")
    assert [i["name"] for i in kust["images"]] == [engine()["image"].split(":")[0]]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_against_the_kubernetes_schemas(version):
    checked = set()
    for name, doc in manifests().items():
        if name == "kustomization.yaml" or doc["apiVersion"].startswith(CRD_GROUP):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert checked == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}


def test_schema_validation_rejects_a_misspelt_field_and_a_wrong_type():
    sts = statefulset()
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/health/live"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(sts, K8S_VERSIONS[0], strict=True)
    sts = statefulset()
    sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "90s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[0], strict=True)


# -- Prometheus Operator kinds ------------------------------------------------------
def test_podmonitor_scrapes_the_exporter_under_the_alerts_job_name():
    pm = by_kind("PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["metadata"]["name"]
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # job="engram-streaming", as in the alerts and the example scrape config
    assert labels[pm["spec"]["jobLabel"]] == "engram-streaming"
    assert 'up{job="engram-streaming"}' in (ROOT / "prometheus/alerts.yml").read_text()
    [ep] = pm["spec"]["podMetricsEndpoints"]
    assert named_port(ep["port"]) == listen_port("ENGRAM_METRICS_ADDR") and ep["path"] == "/metrics"
    [job] = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())["scrape_configs"]
    assert (ep["interval"], ep["scrapeTimeout"]) == (job["scrape_interval"], job["scrape_timeout"])


def source_groups() -> list[dict]:
    return [g for rel in ("prometheus/alerts.yml", "prometheus/recording.yml")
            for g in yaml.safe_load((ROOT / rel).read_text())["groups"]]


def test_prometheusrule_carries_the_groups_of_the_rule_files():
    pr = by_kind("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["metadata"]["name"]
    assert set(pr["spec"]) == {"groups"}
    assert pr["spec"]["groups"] == source_groups()
    for group in pr["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule) and rule["expr"]


def test_prometheusrule_is_generated_and_drift_is_caught(tmp_path):
    check = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text((HERE / "prometheusrule.yaml").read_text().replace("for: 5m", "for: 10m", 1))
    check = subprocess.run([sys.executable, str(GEN), "--check", "--output", str(stale)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "stale" in check.stderr


# -- fitting the engine -------------------------------------------------------------
def test_config_is_a_toml_file_passed_with_config(tmp_path):
    engine_config(tmp_path)  # parses, every key known, every value valid
    toml = tomllib.loads(config_toml(tmp_path).read_text())
    overridden = {k for k in toml if BY_NAME[k.replace("_", "-")].env in engine_env()}
    assert not overridden, f"set by the environment, which beats the file: {overridden}"
    assert "cpus" not in toml, "the kubelet chooses the cores; the engine takes its affinity"
    assert isinstance(toml["workers"], int), "auto would count the node's CPUs without the static policy"
    assert engine()["args"][0] == "run"


def test_dev_shm_is_a_memory_emptydir_sized_from_the_engines_figure(tmp_path):
    [mount] = [m for m in engine()["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    [vol] = [v for v in pod()["volumes"] if v["name"] == mount["name"]]
    assert vol["emptyDir"]["medium"] == "Memory"
    need, suggested = shm_figure("--config", str(config_toml(tmp_path)), env=engine_env())
    size = k8s_bytes(vol["emptyDir"]["sizeLimit"])
    assert size >= suggested > need
    # tmpfs pages count against the container's memory limit once written
    limit = k8s_bytes(engine()["resources"]["limits"]["memory"])
    assert limit >= size + 2**30


def test_whole_cores_for_the_static_cpu_manager(tmp_path):
    for c in pod()["containers"] + pod().get("initContainers", []):
        res = c["resources"]
        assert res["requests"] == res["limits"], f"{c['name']}: not Guaranteed QoS"
        assert re.fullmatch(r"[1-9][0-9]*", str(res["limits"]["cpu"])), "whole CPUs only"
    cpus = int(engine()["resources"]["limits"]["cpu"])
    assert engine_config(tmp_path).workers == cpus - 1  # one core left for supervisor, gateway, exporter


def test_probes_reach_the_exporter_and_the_gateway():
    c = engine()
    live, ready, start = c["livenessProbe"], c["readinessProbe"], c["startupProbe"]
    assert live["httpGet"]["path"] == "/health/live"
    assert ready["httpGet"]["path"] == "/health/ready"
    for probe in (live, ready):
        assert named_port(probe["httpGet"]["port"]) == listen_port("ENGRAM_METRICS_ADDR")
    assert start["grpc"] == {"port": 50051, "service": ""}
    assert start["grpc"]["port"] == listen_port("ENGRAM_GRPC_ADDR")
    assert engine_env()["ENGRAM_METRICS_ADDR"].startswith("0.0.0.0:")  # the kubelet probes the pod IP
    assert engine_env()["ENGRAM_GRPC_ADDR"].startswith("0.0.0.0:")


def test_grace_period_covers_the_drain_and_the_final_snapshots(tmp_path):
    graceful = engine_config(tmp_path).graceful_timeout
    assert pod()["terminationGracePeriodSeconds"] > 2 * graceful
    # a Service named engram would inject ENGRAM_SERVICE_HOST and the like
    assert pod()["enableServiceLinks"] is False


def test_service_pdb_and_storage_fit_the_statefulset():
    sts, svc, pdb = statefulset(), by_kind("Service"), by_kind("PodDisruptionBudget")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {named_port(p["targetPort"]) for p in svc["spec"]["ports"]} == \
        {listen_port("ENGRAM_METRICS_ADDR"), listen_port("ENGRAM_GRPC_ADDR")}
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"], "minAvailable would block drains of a single replica"
    # the data directory lies on the claim, the claim on the image's volume path
    [claim] = sts["spec"]["volumeClaimTemplates"]
    [mount] = [m for m in engine()["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert engine_env()["ENGRAM_DATA_DIR"].startswith(mount["mountPath"].rstrip("/") + "/")
    assert f'VOLUME ["{mount["mountPath"]}"]' in DOCKERFILE.read_text()


def test_pod_runs_as_the_images_user_without_privileges():
    uid = int(re.search(r"useradd [^\n]*--uid ([0-9]+)", DOCKERFILE.read_text()).group(1))
    sec, csec = pod()["securityContext"], engine()["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] == uid and sec["fsGroup"]
    assert csec["allowPrivilegeEscalation"] is False and csec["capabilities"]["drop"] == ["ALL"]
    if csec.get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in engine()["volumeMounts"]}
