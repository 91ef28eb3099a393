"""The Helm chart in `deploy/helm/tidemark`, rendered by Helm's own engine and checked object by
object against the Kubernetes OpenAPI schemas.

Helm comes from PyPI: `helm-python-sdk` binds Helm's Go SDK (its wheel carries the library), so
rendering here is `helm template`'s code, `values.schema.json` included. The NATS dependency is
not vendored (fetching it needs the chart repository); with `nats.enabled` the parent chart is
rendered alone, which covers every object this chart writes, and the accounts it hands the NATS
chart are checked through the same template in the `-nats-permissions` ConfigMap.

Custom resources (the ServiceMonitor) have no built-in schema; they are checked by hand against
what the Prometheus Operator reads: a selector matching the Services and a named port they have.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.archiver.settings import ArchiverSettings
from services.bus.permissions import matrix_document
from services.catalog.settings import CatalogSettings
from services.executor.settings import ExecutorSettings
from services.planner.settings import PlannerSettings
from services.settings import Settings

pytestmark = pytest.mark.integration

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk (Helm's engine, from PyPI) is not installed"
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed"
)

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tidemark"
KUBE_VERSION = "1.30.0"
SERVICES = ("planner", "catalog", "executor", "archiver")
CUSTOM = {"monitoring.coreos.com/v1"}

CREDS = {
    s: {"nats": {"credentialsSecret": {"name": f"{s}-nats", "key": "nats.creds"}}} for s in SERVICES
}
PG_DB = {
    "uid": "orders-db",
    "engine": "postgres",
    "name": "orders",
    "system_id": "7312001234567890123",
}


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


MINIMAL = merge(
    {"gcs": {"bucket": "tidemark-archive"}, "externalNats": {"url": "nats://nats.nats.svc:4222"}},
    CREDS,
)
EXTERNAL = merge(
    MINIMAL,
    {
        "externalNats": {"tls": {"caSecret": {"name": "nats-ca", "key": "ca.crt"}}},
        "gcs": {
            "prefix": "prod",
            "workloadIdentityServiceAccount": "tidemark@proj.iam.gserviceaccount.com",
        },
        "telemetry": {"otlpEndpoint": "http://otel-collector.monitoring:4318"},
        "otelCollector": {"enabled": True},
        "databases": [
            {
                **PG_DB,
                "postgres": {
                    "data_dir": "/var/lib/postgresql/16/main",
                    "port": 5432,
                    "spool_dir": "/var/lib/tidemark/spool/orders-db",
                },
            },
            {
                "uid": "sales-db",
                "engine": "oracle",
                "name": "SALES",
                "system_id": "1234567890",
                "oracle": {
                    "oracle_home": "/u01/app/oracle/product/19.0.0/dbhome_1",
                    "oracle_sid": "SALES",
                    "staging_dir": "/var/lib/tidemark/oracle-stage/sales-db",
                    "dsn": "sales-db:1521/SALES",
                    "user": "C##TIDEMARK",
                    "password_file": "/var/run/secrets/tidemark/sales-db/password",
                    "archive_dest_id": 2,
                },
            },
        ],
        "executor": {
            "volumes": [
                {
                    "name": "pgdata",
                    "mountPath": "/var/lib/postgresql",
                    "hostPath": "/var/lib/postgresql",
                }
            ],
            "volumeSnapshots": {"enabled": True},
            "settings": {"concurrency": 3},
        },
        "archiver": {
            "volumes": [
                {
                    "name": "spool",
                    "mountPath": "/var/lib/tidemark/spool",
                    "hostPath": "/var/lib/tidemark/spool",
                },
                {
                    "name": "arch",
                    "mountPath": "/u01/arch",
                    "claimName": "oracle-arch",
                    "readOnly": True,
                },
                {
                    "name": "sales-password",
                    "mountPath": "/var/run/secrets/tidemark/sales-db",
                    "secretName": "sales-db-tidemark",
                },
            ],
            "settings": {"parallelism": 8},
        },
        "planner": {"settings": {"retention_enabled": False}},
    },
)
BUNDLED_NATS = {
    "gcs": {"bucket": "tidemark-archive"},
    "nats": {"enabled": True},
    "natsAuth": {"mode": "password"},
    "global": {"tidemark": {"natsPasswords": "tidemark-nats-passwords"}},
}
REPLICATED_CATALOG = merge(
    MINIMAL,
    {
        "catalog": {
            "replicas": 3,
            "database": {
                "url": "postgresql://tidemark@catalog-db:5432/tidemark",
                "passwordSecret": {"name": "catalog-db", "key": "password"},
            },
        }
    },
)
MONITORED = merge(MINIMAL, {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
ALERTING = merge(MINIMAL, {"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}})

VALUE_SETS = {
    "minimal": MINIMAL,
    "external-nats": EXTERNAL,
    "bundled-nats": BUNDLED_NATS,
    "replicated-catalog": REPLICATED_CATALOG,
    "service-monitor": MONITORED,
    "prometheus-rule": ALERTING,
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="prod", namespace="tidemark")
    docs = []
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VALUE_SETS[request.param])


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (d for d in docs if d["kind"] in ("Deployment", "DaemonSet"))


def test_every_object_is_valid_kubernetes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        if doc["apiVersion"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_chart_lints_clean() -> None:
    report = helm.lint(str(CHART), MINIMAL)
    problems = [
        m
        for m in report["messages"]
        if m["severity"] >= 2 and "missing these dependencies: nats" not in m["error"]
    ]
    assert problems == []


def test_each_settings_file_loads_into_the_settings_model(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, docs = rendered
    for service in SERVICES:
        config = named(docs, "ConfigMap", f"prod-tidemark-{service}")["data"]["tidemark.toml"]
        path = tmp_path / f"{service}.toml"
        path.write_text(config)
        monkeypatch.setenv("TIDEMARK_CONFIG", str(path))
        settings = Settings()
        assert settings.health_port == 8480
        workload = next(w for w in workloads(docs) if w["metadata"]["name"].endswith(service))
        mounts = workload["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        mounted = [Path(m["mountPath"]) for m in mounts]
        for secret in (
            settings.nats.credentials_file,
            settings.nats.password_file,
            settings.nats.tls_ca,
            settings.catalog.password_file,
        ):
            if secret is not None:  # a file reference must point into a mounted secret
                assert secret.parent in mounted, f"{service}: {secret} is not mounted"


def test_the_database_lists_reach_the_node_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(EXTERNAL)
    loaded = {}
    for service in ("executor", "archiver"):
        path = tmp_path / f"{service}.toml"
        path.write_text(
            named(docs, "ConfigMap", f"prod-tidemark-{service}")["data"]["tidemark.toml"]
        )
        monkeypatch.setenv("TIDEMARK_CONFIG", str(path))
        loaded[service] = Settings()
    executor, archiver = loaded["executor"], loaded["archiver"]
    assert executor.executor.concurrency == 3
    assert executor.executor.databases[0].system_id == 7312001234567890123  # not rounded
    assert [d.uid for d in archiver.archiver.databases] == ["orders-db", "sales-db"]
    assert archiver.archiver.store_url == "gs://tidemark-archive"
    assert archiver.archiver.prefix == "prod"
    assert archiver.telemetry.otlp_endpoint == "http://otel-collector.monitoring:4318"


def test_pods_are_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    found = 0
    for workload in workloads(docs):
        found += 1
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/var/lib/tidemark"} <= mounts
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert container["resources"]["limits"]["memory"]
    assert found == 4


def test_only_the_snapshotting_executor_holds_an_api_token() -> None:
    for values, token in ((MINIMAL, False), (EXTERNAL, True)):
        docs = render(values)
        for account in of_kind(docs, "ServiceAccount"):
            executor = account["metadata"]["name"].endswith("-executor")
            assert account["automountServiceAccountToken"] is (token and executor)
        roles = of_kind(docs, "Role")
        if not token:
            assert roles == []
            assert of_kind(docs, "ClusterRole") == []
            continue
        (role,) = roles
        assert role["metadata"]["name"] == "prod-tidemark-executor"
        granted = {
            (r["apiGroups"][0], res, v)
            for r in role["rules"]
            for res in r["resources"]
            for v in r["verbs"]
        }
        assert granted == {
            *(
                ("snapshot.storage.k8s.io", "volumesnapshots", v)
                for v in ("create", "get", "list", "delete")
            ),
            *(("", "persistentvolumeclaims", v) for v in ("get", "list", "create")),
            ("", "pods", "get"),
            ("", "pods", "list"),
        }


def test_workload_identity_and_no_secret_values() -> None:
    docs = render(EXTERNAL)
    for account in of_kind(docs, "ServiceAccount"):
        annotation = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        assert annotation == "tidemark@proj.iam.gserviceaccount.com"
    for values in VALUE_SETS.values():
        assert of_kind(render(values), "Secret") == []  # secrets are referenced, never made


def test_node_services_mount_what_the_databases_need() -> None:
    docs = render(EXTERNAL)
    archiver = named(docs, "DaemonSet", "prod-tidemark-archiver")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in archiver["containers"][0]["volumeMounts"]}
    assert mounts["/u01/arch"]["readOnly"] is True  # an Oracle archive destination: read only
    assert mounts["/var/lib/tidemark/spool"]["readOnly"] is False  # the spool is released
    volumes = {v["name"]: v for v in archiver["volumes"]}
    assert volumes["node-arch"]["persistentVolumeClaim"]["claimName"] == "oracle-arch"
    assert volumes["node-spool"]["hostPath"]["path"] == "/var/lib/tidemark/spool"
    assert volumes["node-sales-password"]["secret"]["secretName"] == "sales-db-tidemark"
    assert mounts["/var/run/secrets/tidemark/sales-db"]["readOnly"] is True
    assert archiver["nodeSelector"] == {"tidemark.io/database-node": "true"}
    executor = named(docs, "DaemonSet", "prod-tidemark-executor")["spec"]["template"]["spec"]
    assert executor["securityContext"]["runAsUser"] == 999  # the database's OS user
    env = {e["name"]: e for e in executor["containers"][0]["env"]}
    assert env["TIDEMARK_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_network_policies_deny_by_default_and_open_what_is_needed() -> None:
    docs = render(REPLICATED_CATALOG)
    deny = named(docs, "NetworkPolicy", "prod-tidemark-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]
    catalog = named(docs, "NetworkPolicy", "prod-tidemark-catalog")["spec"]
    egress_ports = {p["port"] for rule in catalog["egress"] for p in rule["ports"]}
    assert {53, 4222, 443, 5432} <= egress_ports
    assert {p["port"] for rule in catalog["ingress"] for p in rule["ports"]} == {"health", "http"}
    archiver = named(docs, "NetworkPolicy", "prod-tidemark-archiver")["spec"]
    assert 5432 not in {p["port"] for rule in archiver["egress"] for p in rule["ports"]}
    bundled = named(render(BUNDLED_NATS), "NetworkPolicy", "prod-tidemark-planner")["spec"]
    nats_rule = next(r for r in bundled["egress"] if r["ports"][0]["port"] == 4222)
    assert nats_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "nats"


def test_deployments_have_disruption_budgets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    budgets = {b["metadata"]["name"]: b for b in of_kind(docs, "PodDisruptionBudget")}
    for deployment in of_kind(docs, "Deployment"):
        budget = budgets[deployment["metadata"]["name"]]
        assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_a_replicated_catalog_uses_postgresql() -> None:
    docs = render(REPLICATED_CATALOG)
    assert named(docs, "Deployment", "prod-tidemark-catalog")["spec"]["replicas"] == 3
    config = named(docs, "ConfigMap", "prod-tidemark-catalog")["data"]["tidemark.toml"]
    assert 'url = "postgresql://tidemark@catalog-db:5432/tidemark"' in config
    assert 'password_file = "/var/run/secrets/tidemark/catalog-db/password"' in config


def test_a_replicated_catalog_without_a_database_fails_to_render() -> None:
    with pytest.raises(helm.HelmError, match=r"catalog.replicas is 2: .*catalog.database.url"):
        render(merge(MINIMAL, {"catalog": {"replicas": 2}}))


def test_each_database_is_declared_once_and_both_node_services_read_it() -> None:
    docs = render(EXTERNAL)
    for service in ("executor", "archiver"):
        config = named(docs, "ConfigMap", f"prod-tidemark-{service}")["data"]["tidemark.toml"]
        assert config.count("[[databases]]") == 2, service
        assert f"[[{service}.databases]]" not in config
    catalog = named(docs, "ConfigMap", "prod-tidemark-catalog")["data"]["tidemark.toml"]
    assert "[[databases]]" not in catalog


def test_old_per_service_database_lists_fail_with_how_to_move() -> None:
    old = merge(MINIMAL, {"archiver": {"databases": [{**PG_DB, "spool_dir": "/spool"}]}})
    with pytest.raises(helm.HelmError, match=r"archiver.databases has moved: declare each"):
        render(old)


def test_values_outside_the_schema_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(
        yaml.safe_dump(merge(MINIMAL, {"planner": {"replica": 2}, "natsAuth": {"mode": "jwt"}}))
    )
    values = yaml.safe_load(bad.read_text())
    with pytest.raises(helm.HelmError, match="additional properties 'replica' not allowed"):
        render(values)
    with (
        helm.Chart.load(str(CHART)) as chart,
        pytest.raises(helm.HelmError, match="/natsAuth/mode"),
    ):
        chart.validate_schema(values)


def test_the_defaults_match_the_schema() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(None)


def test_extra_settings_in_the_schema_exist_in_the_models() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    models = {
        "planner": PlannerSettings,
        "catalog": CatalogSettings,
        "executor": ExecutorSettings,
        "archiver": ArchiverSettings,
    }
    for service, model in models.items():
        allowed = schema["properties"][service]["properties"]["settings"]["properties"]
        assert set(allowed) <= set(model.model_fields), service


def test_the_permissions_matrix_is_the_python_one() -> None:
    """One matrix: what the chart renders is `services/bus/permissions.py`'s, role for role."""
    docs = render(BUNDLED_NATS)
    data = named(docs, "ConfigMap", "prod-tidemark-nats-permissions")["data"]
    matrix = json.loads(data["permissions.json"])
    assert matrix == matrix_document()
    assert "tm.cmd.executor.*.backup" in matrix["planner"]["publish"]["allow"]
    for service in ("archiver", "catalog", "executor", "tool"):
        assert not any(s.startswith("tm.cmd.executor") for s in matrix[service]["publish"]["allow"])
    assert "tm.cmd.planner.any.backup" in matrix["tool"]["publish"]["allow"]
    accounts = yaml.safe_load(data["accounts.yaml"])["accounts"]["TIDEMARK"]
    assert accounts["jetstream"] == "enabled"
    users = {u["user"]: u for u in accounts["users"]}
    assert set(users) == {f"tidemark-{s}" for s in (*SERVICES, "tool")}
    for role in (*SERVICES, "tool"):
        assert users[f"tidemark-{role}"]["permissions"] == matrix[role], role
    assert users["tidemark-planner"]["password"] == "<< $TIDEMARK_NATS_PASSWORD_PLANNER >>"


def test_bundled_nats_is_reached_by_its_service_name() -> None:
    docs = render(BUNDLED_NATS)
    config = named(docs, "ConfigMap", "prod-tidemark-planner")["data"]["tidemark.toml"]
    assert 'url = "nats://prod-nats.tidemark.svc:4222"' in config
    assert 'user = "tidemark-planner"' in config
    planner = named(docs, "Deployment", "prod-tidemark-planner")["spec"]["template"]["spec"]
    (auth,) = [v for v in planner["volumes"] if v["name"] == "nats-auth"]
    assert auth["secret"] == {
        "secretName": "tidemark-nats-passwords",
        "defaultMode": 0o400,
        "items": [{"key": "planner", "path": "password"}],
    }


def test_the_service_monitor_scrapes_the_health_port() -> None:
    docs = render(MONITORED)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s for s in of_kind(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert len(services) == 4
    for service in services:
        assert "health" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "health", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert of_kind(render(MINIMAL), "ServiceMonitor") == []


def test_the_readme_example_installs() -> None:
    readme = (CHART.parents[2] / "README.md").read_text()
    section = readme.split("## Deploy on Kubernetes", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    docs = render(example)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert {d["kind"] for d in docs} >= {"Deployment", "DaemonSet", "NetworkPolicy"}
