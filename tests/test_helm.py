"""The Helm chart (helm/metering): rendered by real Helm, validated against Kubernetes schemas.

Renderer: ``helm-python-sdk`` (PyPI, import ``helm_python``), which bundles ``libhelm_c``, a
C ABI over Helm's own Go SDK (``helm.sh/helm/v4``): the chart is rendered by Helm's template
engine, with its values coalescing, ``values.schema.json`` validation, ``.Files`` and
``fail``, and linted by Helm's linter. Schemas: ``kubernetes-validate`` (PyPI), which ships
the Kubernetes OpenAPI-derived JSON schemas of every minor version offline; manifests are
checked in strict mode (unknown fields fail) against the oldest version the chart supports
(``kubeVersion`` in Chart.yaml) and the newest bundled one. The Prometheus Operator's CRDs
(ServiceMonitor, PrometheusRule) have no schema there; they are checked against the minimal
schemas below (the fields the chart uses, no others).

Without the two packages the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from metering.engine.accounts import parse_accounts

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "metering"
RULES_SOURCE = ROOT / "deploy" / "prometheus" / "rules" / "metering.rules.yml"
RULES_COPY = CHART / "files" / "metering.rules.yml"
DASHBOARDS_SOURCE = ROOT / "deploy" / "grafana" / "dashboards"
DASHBOARDS_COPY = CHART / "files" / "dashboards"
SYNC_HINT = "run helm/sync-files.sh"

RELEASE = "metering"
NAMESPACE = "billing"

SECURE_VALUES: dict[str, Any] = {
    "replicaCount": 3,
    "kafka": {
        "bootstrapServers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
        "partitions": 6,
        "sasl": {"enabled": True, "mechanism": "SCRAM-SHA-256", "existingSecret": "kafka-user"},
        "tls": {
            "enabled": True,
            "existingSecret": "kafka-tls",
            "clientCert": True,
            "keyPasswordKey": "key-password",
        },
    },
    "clickhouse": {"existingSecret": "ch-credentials", "urlKey": "CLICKHOUSE_URL"},
    "accounts": {
        "acct-1": {
            "timezone": "America/Denver",
            "policies": ["mitel_us", "intelepeer_uc"],
            "trunk_groups": {
                "tg-1": {"capacity": 20, "bundle": "user"},
                "tg-1b": {"redundant_for": "tg-1"},
            },
        }
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    "persistence": {"storageClassName": "fast-ssd", "size": "50Gi"},
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ],
}

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"

_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

#: Minimal schemas of the Prometheus Operator CRDs (monitoring.coreos.com/v1), limited to
#: the fields this chart writes (anything else fails, as in strict mode).
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchLabels": _STRING_MAP},
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [
                                            {"required": ["record"]},
                                            {"required": ["alert"]},
                                        ],
                                        "properties": {
                                            "record": {"type": "string"},
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": {"type": "string", "pattern": _DURATION},
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


# ----------------------------------------------------------------------------- fixtures
def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError:  # pragma: no cover - depends on the environment
        msg = f"{package} is not installed (pip install {package})"
        if _in_ci():
            pytest.fail(f"{msg}; CI=true needs it")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def helm() -> Any:
    return _need("helm_python", "helm-python-sdk")


@pytest.fixture(scope="module")
def kv() -> Any:
    _need("kubernetes_validate", "kubernetes-validate")
    import kubernetes_validate.utils as utils

    return utils


def render(
    helm: Any, values: dict[str, Any] | None = None, chart: Path = CHART
) -> list[dict[str, Any]]:
    """Every manifest Helm renders (NOTES.txt left out), parsed."""
    with helm.Chart.load(str(chart)) as c:
        out = c.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__template__"}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    sts = one(docs, "StatefulSet")
    c: dict[str, Any]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.fixture(scope="module")
def default_docs(helm: Any) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def secure_docs(helm: Any) -> list[dict[str, Any]]:
    return render(helm, SECURE_VALUES)


def _k8s_versions(kv: Any) -> list[str]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    low = re.match(r">=\s*([0-9]+\.[0-9]+)", chart["kubeVersion"])
    assert low, chart["kubeVersion"]
    return [low.group(1), kv.major_minor(kv.latest_version())]


def _validate_all(kv: Any, docs: list[dict[str, Any]]) -> Iterator[str]:
    for doc in docs:
        body = strip(doc)
        if body["kind"] in CRD_SCHEMAS:
            jsonschema.validate(body, CRD_SCHEMAS[body["kind"]])
            yield body["kind"]
            continue
        for version in _k8s_versions(kv):
            try:
                kv.validate(body, version, strict=True)
            except kv.ValidationError as exc:
                raise AssertionError(
                    f"{doc['__template__']} {body['kind']} (k8s {version}): {exc.message} "
                    f"at {'/'.join(map(str, exc.path))}"
                ) from None
        yield body["kind"]


# ----------------------------------------------------------------------------- rendering
def test_default_render_is_valid_kubernetes(kv: Any, default_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(_validate_all(kv, default_docs))
    dashboards = len(list(DASHBOARDS_COPY.glob("*.json")))
    expected = ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "ServiceAccount"]
    assert kinds == sorted([*expected, "StatefulSet", *["ConfigMap"] * dashboards]), kinds


def test_secure_render_is_valid_kubernetes(kv: Any, secure_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(_validate_all(kv, secure_docs))
    for kind in ("StatefulSet", "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"):
        assert kind in kinds


def test_names_and_labels_are_valid(secure_docs: list[dict[str, Any]]) -> None:
    for doc in secure_docs:
        meta = doc["metadata"]
        assert meta["namespace"] == NAMESPACE
        pattern = _DNS1123_LABEL if doc["kind"] == "Service" else _DNS1123_SUBDOMAIN
        assert pattern.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
        labels = meta["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
            assert key in labels, (doc["kind"], key)
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        for key, value in labels.items():
            assert _LABEL_NAME.match(key.split("/")[-1]), key
            assert _LABEL_VALUE.match(value) and len(value) <= 63, (key, value)


def test_statefulset_state_volume_probes_and_security(default_docs: list[dict[str, Any]]) -> None:
    sts = one(default_docs, "StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = container(default_docs)
    # selector = pod labels
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["replicas"] == 2
    assert (
        spec["serviceName"] == one(default_docs, "Service", "metering-headless")["metadata"]["name"]
    )
    # command
    assert c["command"] == ["metering", "worker"]
    args = c["args"]
    assert args[args.index("--bootstrap") + 1] == "$(KAFKA_BOOTSTRAP_SERVERS)"
    assert args[args.index("--accounts") + 1] == "/config/accounts.yaml"
    assert not any("clickhouse" in a.lower() for a in args), "credentials on the command line"
    # Faust's data directory on the claim
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["data"]["mountPath"] == "/data"
    assert mounts["accounts"]["mountPath"] == "/config" and mounts["accounts"]["readOnly"]
    env = env_of(c)
    assert env["METERING_STATE_STORE"] == "rocksdb://"  # on the pod's volume (/data)
    assert env["METERING_DATA_DIR"] == "/data"
    assert env["METERING_PROFILE"] == "production"
    assert env["METERING_PARTITIONS"] == "4"
    assert env["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["METERING_WEB_HOST"] == (
        f"$(POD_NAME).metering-headless.{NAMESPACE}.svc.cluster.local"
    )
    assert [e["name"] for e in c["env"]].index("POD_NAME") == 0  # defined before its use
    assert env["CLICKHOUSE_URL"] == {"secretKeyRef": {"name": "metering-clickhouse", "key": "url"}}
    assert "KAFKA_SASL_PASSWORD" not in env and "KAFKA_SSL_CAFILE" not in env
    # port and probes
    (port,) = c["ports"]
    assert port == {"name": "http", "containerPort": 6066, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    # resources and security
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert c["resources"]["limits"]["memory"] == "2Gi"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # accounts ConfigMap mounted, checksum annotation rolls pods on change
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["accounts"]["configMap"]["name"] == "metering-accounts"
    assert "checksum/accounts" in spec["template"]["metadata"]["annotations"]


def test_secret_references_for_sasl_tls_and_clickhouse(secure_docs: list[dict[str, Any]]) -> None:
    c = container(secure_docs)
    env = env_of(c)
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    assert env["KAFKA_SASL_USERNAME"] == {"secretKeyRef": {"name": "kafka-user", "key": "username"}}
    assert env["KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": "kafka-user", "key": "password"}}
    assert env["KAFKA_SSL_CAFILE"] == "/etc/metering/kafka-tls/ca.crt"
    assert env["KAFKA_SSL_CERTFILE"] == "/etc/metering/kafka-tls/tls.crt"
    assert env["KAFKA_SSL_KEYFILE"] == "/etc/metering/kafka-tls/tls.key"
    assert env["KAFKA_SSL_KEY_PASSWORD"] == {
        "secretKeyRef": {"name": "kafka-tls", "key": "key-password"}
    }
    assert env["CLICKHOUSE_URL"] == {
        "secretKeyRef": {"name": "ch-credentials", "key": "CLICKHOUSE_URL"}
    }
    assert env["EXTRA"] == "1"
    # no secret value is written in plain text anywhere
    sts = one(secure_docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes["kafka-tls"]["secret"]
    assert secret["secretName"] == "kafka-tls"
    assert {i["key"]: i["path"] for i in secret["items"]} == {
        "ca.crt": "ca.crt",
        "tls.crt": "tls.crt",
        "tls.key": "tls.key",
    }
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["kafka-tls"] == {
        "name": "kafka-tls",
        "mountPath": "/etc/metering/kafka-tls",
        "readOnly": True,
    }
    assert not [d for d in secure_docs if d["kind"] == "Secret"], "the chart creates no Secret"
    # other settings of the secure values
    assert sts["spec"]["replicas"] == 3
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


def test_tls_without_client_certificate_mounts_only_the_ca(helm: Any) -> None:
    docs = render(helm, {"kafka": {"tls": {"enabled": True}}})
    env = env_of(container(docs))
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert env["KAFKA_SSL_CAFILE"] == "/etc/metering/kafka-tls/ca.crt"
    assert "KAFKA_SSL_CERTFILE" not in env and "KAFKA_SASL_USERNAME" not in env
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "kafka-tls"]
    assert [i["path"] for i in tls["secret"]["items"]] == ["ca.crt"]
    docs = render(helm, {"kafka": {"sasl": {"enabled": True}}})
    assert env_of(container(docs))["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"


def test_services_pdb_and_service_monitor_select_the_workers(
    secure_docs: list[dict[str, Any]],
) -> None:
    pod_labels = one(secure_docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    api = one(secure_docs, "Service", "metering")
    headless = one(secure_docs, "Service", "metering-headless")
    for svc in (api, headless):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] == "http" and port["name"] == "http"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    pdb = one(secure_docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    sm = one(secure_docs, "ServiceMonitor")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= api["metadata"]["labels"].items()
    assert not selector.items() <= headless["metadata"]["labels"].items(), "scraped twice"
    assert sm["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_prometheus_rule_is_the_rules_file(secure_docs: list[dict[str, Any]]) -> None:
    rule = one(secure_docs, "PrometheusRule")
    source = yaml.safe_load(RULES_SOURCE.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == source["groups"]
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert "MeteringWorkerStalled" in alerts


def test_accounts_configmap_is_a_valid_accounts_file(
    default_docs: list[dict[str, Any]], secure_docs: list[dict[str, Any]]
) -> None:
    empty = one(default_docs, "ConfigMap", "metering-accounts")
    assert parse_accounts(yaml.safe_load(empty["data"]["accounts.yaml"])) == {}
    cm = one(secure_docs, "ConfigMap", "metering-accounts")
    parsed = yaml.safe_load(cm["data"]["accounts.yaml"])
    assert parsed == {"accounts": SECURE_VALUES["accounts"]}
    accounts = parse_accounts(parsed)
    assert accounts["acct-1"].timezone == "America/Denver"
    assert accounts["acct-1"].capacity_of("tg-1") == 20
    assert accounts["acct-1"].group("tg-1b").owner == "tg-1"


def test_existing_accounts_configmap_replaces_the_chart_one(helm: Any) -> None:
    docs = render(
        helm, {"existingAccountsConfigMap": "my-accounts", "dashboards": {"enabled": False}}
    )
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (accounts,) = [v for v in pod["volumes"] if v["name"] == "accounts"]
    assert accounts["configMap"]["name"] == "my-accounts"


def test_replicas_beyond_the_partition_count_fail(helm: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"must not exceed kafka\.partitions"):
        render(helm, {"replicaCount": 5, "kafka": {"partitions": 4}})
    assert one(render(helm, {"replicaCount": 4}), "StatefulSet")["spec"]["replicas"] == 4


# ----------------------------------------------------------------------------- dashboards
def test_dashboards_become_sidecar_configmaps(helm: Any, tmp_path: Path) -> None:
    chart = tmp_path / "metering"
    shutil.copytree(CHART, chart)
    dash = chart / "files" / "dashboards"
    for old in dash.glob("*.json"):
        old.unlink()
    boards = {
        "Metering Overview.json": {"title": "Metering overview", "panels": [], "uid": "m-ov"},
        "fair_use.json": {"title": "Fair use", "panels": [{"type": "table"}], "uid": "m-fu"},
    }
    for name, board in boards.items():
        (dash / name).write_text(json.dumps(board, indent=2), encoding="utf-8")
    docs = render(helm, {"dashboards": {"folder": "Billing"}}, chart=chart)
    cms = {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    }
    assert set(cms) == {"metering-dashboard-metering-overview", "metering-dashboard-fair-use"}
    for cm in cms.values():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "Billing"
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == boards[key]
    assert not [
        d
        for d in render(helm, {"dashboards": {"enabled": False}}, chart=chart)
        if "dashboard" in d["metadata"]["name"]
    ]


def test_every_deployed_dashboard_is_rendered(
    helm: Any, default_docs: list[dict[str, Any]]
) -> None:
    sources = sorted(p.name for p in DASHBOARDS_SOURCE.glob("*.json"))
    rendered = sorted(
        key
        for d in default_docs
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
        for key in d["data"]
    )
    assert rendered == sources, SYNC_HINT


# ----------------------------------------------------------------------------- copies
def test_chart_rules_copy_equals_the_source() -> None:
    assert RULES_COPY.read_bytes() == RULES_SOURCE.read_bytes(), SYNC_HINT


def test_chart_dashboard_copies_equal_the_sources() -> None:
    sources = {p.name: p.read_bytes() for p in DASHBOARDS_SOURCE.glob("*.json")}
    copies = {p.name: p.read_bytes() for p in DASHBOARDS_COPY.glob("*.json")}
    assert sorted(copies) == sorted(sources), SYNC_HINT
    for name, data in sources.items():
        assert copies[name] == data, f"{name} differs: {SYNC_HINT}"


# ----------------------------------------------------------------------------- values
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_values_yaml_validates_against_the_schema(helm: Any) -> None:
    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(_values())
    with helm.Chart.load(str(CHART)) as c:
        c.validate_schema(c.merge_values(SECURE_VALUES))


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"kafka": {"partitions": 0}}, "partitions"),
        ({"kafka": {"sasl": {"enabled": "yes"}}}, "enabled"),
        ({"kafka": {"sasl": {"mechanism": "MD5"}}}, "mechanism"),
        ({"worker": {"stateStore": "redis://"}}, "stateStore"),
        ({"persistence": {"size": "lots"}}, "size"),
        ({"accounts": {"a": {"trunk_groups": {"tg": {"capacity": -1}}}}}, "capacity"),
        ({"accounts": {"a": {"policies": ["gold"]}}}, "policies"),
        ({"replicasCount": 2}, "replicasCount"),
    ],
)
def test_wrong_values_fail_the_schema(helm: Any, override: dict[str, Any], where: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(_merge(_values(), override))
    with pytest.raises(helm.HelmValuesError, match=where):
        render(helm, override)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def test_every_values_key_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if not re.match(r"^\s*[A-Za-z0-9_.-]+:", line):
            continue
        previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if "#" not in line and not previous.strip().startswith("#"):
            undocumented.append(f"{i + 1}: {line.strip()}")
    assert not undocumented, undocumented


def test_values_document_the_replica_partition_bound() -> None:
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert "replicaCount <= kafka.partitions" in text


def test_helm_lint_is_clean(helm: Any) -> None:
    for values in ({}, SECURE_VALUES):
        report = helm.lint(str(CHART), values, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], report
