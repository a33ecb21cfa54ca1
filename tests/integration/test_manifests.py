"""The install manifests as a cluster admin and an on-call engineer would meet them.

Every kustomization renders with the pinned kubectl (a local binary, no cluster); the operator Deployment runs
one pod at a time, unprivileged, with probes on the port the image's liveness flag serves; RBAC is exactly the
operator's documented API use, with Secrets readable only in rollout namespaces; monitoring selects the
Service that exists; Argo CD may sync what the Applications render. The RBAC size (verbs x resources) is written
to .local/rbac-size.txt. Integration tier: the pinned kubectl is built from Go when not cached ($KUBECTL skips
that). The Dockerfile and the locks are checked from the files alone in tests/unit/test_image.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from torghut_operator.__main__ import app as operator_cli

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
DOCKERFILE = REPO / "operator" / "Dockerfile"
RBAC_SIZE_FILE = REPO / ".local" / "rbac-size.txt"

SYSTEM_NS = "torghut-rollout-system"
NAME = "torghut-rollout-operator"
IMAGE = "ghcr.io/proompteng/torghut-rollout-operator:0.1.0"
OPERATOR_OVERLAYS = ["base", "overlays/torghut", "overlays/local"]
KUSTOMIZATIONS = [*OPERATOR_OVERLAYS, "monitoring", "argocd"]
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}

EXPECTED_CLUSTER_RULES: set[tuple[str, str, str]] = {
    *(("torghut.proompteng.ai", "torghutrollouts", verb) for verb in ("get", "list", "watch", "patch")),
    *(("torghut.proompteng.ai", "torghutrollouts/status", verb) for verb in ("get", "patch")),
    *(("", "events", verb) for verb in ("create", "patch")),
    *(("batch", "jobs", verb) for verb in ("get", "list", "watch", "create")),
    *(("apps", "deployments", verb) for verb in ("get", "list", "watch", "patch")),
    *(("serving.knative.dev", "services", verb) for verb in ("get", "list", "watch", "patch")),
    *(("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")),
    *(("", "namespaces", verb) for verb in ("list", "watch")),
}
"""(apiGroup, resource, verb) the operator uses cluster-wide: Kopf's watches, finalizer and annotations, the
reconciler's Jobs and targets, status writes, events, and the liveness probe's cluster-wide list."""

EXPECTED_NAMESPACE_RULES: set[tuple[str, str, str]] = {
    ("", "secrets", "get"),
    ("", "configmaps", "get"),
    ("", "configmaps", "create"),
    ("", "configmaps", "update"),
    ("", "pods", "list"),
    ("", "pods/log", "get"),
}
"""What it reads (and the evidence report it writes), only in namespaces where TorghutRollouts run; pods and their
logs for the last lines of a failed migration Job's pod."""


# --- rendering ---------------------------------------------------------------------------------------------------


@cache
def kubectl() -> str:
    """The pinned kubectl: $KUBECTL, else the one cluster/build-binaries.sh caches (a version check when cached)."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    from torghut_localstack.binaries import ensure_binaries  # noqa: PLC0415 (only when no KUBECTL is given)

    return str(ensure_binaries(timeout=900) / "kubectl")


@cache
def _render(path: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize manifests/{path} failed:\n{result.stderr}"
    return result.stdout


def render(path: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_render(path)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    matches = [
        doc
        for doc in docs
        if doc["kind"] == kind
        and doc["metadata"]["name"] == name
        and (namespace is None or doc["metadata"].get("namespace") == namespace)
    ]
    assert len(matches) == 1, f"expected one {kind} {namespace or '*'}/{name}, found {len(matches)}"
    return matches[0]


def operator_deployment(path: str) -> dict[str, Any]:
    return find(render(path), "Deployment", NAME, SYSTEM_NS)


def operator_container(path: str) -> dict[str, Any]:
    containers = operator_deployment(path)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: dict[str, Any] = containers[0]
    return container


def rule_triples(rules: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    yield group, resource, verb


# --- Dockerfile --------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1].strip()}" if line.endswith("\\") else f"{pending} {line}"
        if not line.endswith("\\"):
            instruction, _, args = pending.strip().partition(" ")
            lines.append((instruction.upper(), args.strip()))
            pending = ""
    return lines


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def entrypoint() -> list[str]:
    entries = [args for instruction, args in final_stage() if instruction == "ENTRYPOINT"]
    assert len(entries) == 1
    command = json.loads(entries[0])  # exec form, so signals reach the operator (PID 1)
    assert isinstance(command, list)
    return [str(part) for part in command]


def parse_cli(args: list[str]) -> dict[str, Any]:
    """The options the operator CLI parses from `args` (its subcommand's, if it has subcommands), as it does
    when the container starts; a bad option raises here instead of crash-looping the pod."""
    command: Any = typer.main.get_command(operator_cli)
    name = "torghut-operator"
    if hasattr(command, "get_command"):  # a group: the first argument names the subcommand
        assert args, "the command line names no subcommand"
        with command.make_context(name, [], resilient_parsing=True) as group_ctx:
            sub = command.get_command(group_ctx, args[0])
        assert sub is not None, f"torghut-operator has no subcommand {args[0]!r}"
        command, name, args = sub, args[0], args[1:]
    with command.make_context(name, list(args)) as ctx:
        return dict(ctx.params)


# --- tests: rendering --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_renders_complete_unique_objects(path: str) -> None:
    docs = render(path)
    assert docs, f"manifests/{path} renders nothing"
    seen = set()
    for doc in docs:
        assert doc.get("apiVersion")
        assert doc.get("kind")
        meta = doc["metadata"]
        assert meta.get("name")
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{doc['kind']} {meta['name']} is cluster-scoped"
        else:
            assert meta.get("namespace"), f"{doc['kind']} {meta['name']} has no namespace"
        key = (doc["apiVersion"].split("/")[0], doc["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


@pytest.mark.parametrize("path", OPERATOR_OVERLAYS)
def test_install_carries_crd_namespace_identity_and_metrics_service(path: str) -> None:
    docs = render(path)
    crd = find(docs, "CustomResourceDefinition", "torghutrollouts.torghut.proompteng.ai")
    assert crd["spec"]["group"] == "torghut.proompteng.ai"
    assert crd["spec"]["names"]["plural"] == "torghutrollouts"
    find(docs, "Namespace", SYSTEM_NS)
    find(docs, "ServiceAccount", NAME, SYSTEM_NS)
    service = find(docs, "Service", f"{NAME}-metrics", SYSTEM_NS)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http-metrics", 9090)]


# --- tests: the Deployment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", OPERATOR_OVERLAYS)
def test_never_two_operators_at_once(path: str) -> None:
    spec = operator_deployment(path)["spec"]
    # overlays/local runs the operator as a host process (kwok only simulates pods), so it scales the pod to 0.
    assert spec["replicas"] == (0 if path == "overlays/local" else 1)
    assert spec["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("path", OPERATOR_OVERLAYS)
def test_operator_pod_runs_unprivileged_on_a_read_only_root(path: str) -> None:
    pod = operator_deployment(path)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(path)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be writable on a read-only root filesystem"


@pytest.mark.parametrize("path", OPERATOR_OVERLAYS)
def test_operator_image_resources_and_json_logs(path: str) -> None:
    container = operator_container(path)
    assert container["image"] == IMAGE
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    assert "--log-format=json" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TORGHUT_OPERATOR_METRICS_PORT"] == "9090"


@pytest.mark.parametrize("path", OPERATOR_OVERLAYS)
def test_probes_hit_the_liveness_endpoint_the_image_serves(path: str) -> None:
    container = operator_container(path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness_url = urlsplit(parse_cli(entrypoint()[1:] + container["args"])["liveness"])
    assert liveness_url.hostname == "0.0.0.0", "the kubelet probes the pod IP: listen on all addresses"
    for probe_name in ("livenessProbe", "readinessProbe"):
        probe = container[probe_name]
        get = probe["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert (port, get["path"]) == (liveness_url.port, liveness_url.path), probe_name
        assert probe["timeoutSeconds"] >= 5, f"{probe_name}: /healthz lists rollouts through the API server"
    liveness = container["livenessProbe"]
    # The watch-freshness probe already waits 90 s before calling a watch stale: restart within ~2 minutes more.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 120
    assert liveness["initialDelaySeconds"] >= 10
    assert ports["http-metrics"] == 9090


@pytest.mark.parametrize(
    ("path", "namespaces"), [("base", []), ("overlays/torghut", ["torghut"]), ("overlays/local", [])]
)
def test_container_command_line_is_accepted_by_the_operator_cli(path: str, namespaces: list[str]) -> None:
    """No --namespace means cluster-wide; overlays/torghut watches only `torghut`."""
    command = entrypoint()
    assert command[0] == "torghut-operator"
    params = parse_cli(command[1:] + operator_container(path)["args"])
    assert params["liveness"] == "http://0.0.0.0:8080/healthz"
    assert params["log_format"] == "json"
    assert list(params["namespace"] or []) == namespaces


# --- tests: RBAC -------------------------------------------------------------------------------------------------


def test_cluster_role_is_exactly_the_operators_api_use() -> None:
    docs = render("overlays/torghut")
    role = find(docs, "ClusterRole", NAME)
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert "nonResourceURLs" not in rule
    granted = set(rule_triples(role["rules"]))
    assert granted == EXPECTED_CLUSTER_RULES, (
        f"missing: {sorted(EXPECTED_CLUSTER_RULES - granted)}; extra: {sorted(granted - EXPECTED_CLUSTER_RULES)}"
    )
    assert not {resource for _, resource, _ in granted} & {"secrets", "configmaps"}

    binding = find(docs, "ClusterRoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": SYSTEM_NS}]

    namespaced = find(docs, "Role", NAME, "torghut")
    namespace_rules = set(rule_triples(namespaced["rules"]))
    assert namespace_rules == EXPECTED_NAMESPACE_RULES
    assert all(not rule.get("resourceNames") or "*" not in rule["resourceNames"] for rule in namespaced["rules"])

    lines = [
        f"ClusterRole {NAME}: {len(granted)} (verb x resource) grants over "
        f"{len({(g, r) for g, r, _ in granted})} resources, no wildcards, no Secrets",
        *(f"  {group or 'core'}/{resource}: {verb}" for group, resource, verb in sorted(granted)),
        f"Role {NAME} per rollout namespace (overlays/torghut: torghut): {len(namespace_rules)} (verb x resource)",
        *(f"  {group or 'core'}/{resource}: {verb}" for group, resource, verb in sorted(namespace_rules)),
    ]
    RBAC_SIZE_FILE.parent.mkdir(exist_ok=True)
    RBAC_SIZE_FILE.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


@pytest.mark.parametrize("path", OPERATOR_OVERLAYS)
def test_secrets_are_readable_only_through_namespaced_roles(path: str) -> None:
    docs = render(path)
    for doc in docs:
        if doc["kind"] == "ClusterRole":
            resources = {r for _, r, _ in rule_triples(doc["rules"])}
            assert "secrets" not in resources, f"ClusterRole {doc['metadata']['name']} grants Secrets"
    bindings = [doc for doc in docs if doc["kind"] == "RoleBinding"]
    if path != "base":  # base grants no namespace access on its own; every installable overlay must
        assert bindings, f"manifests/{path} grants no namespace access: rollouts could not read their DSN Secret"
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role", "a RoleBinding to a ClusterRole would be easy to widen by mistake"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": SYSTEM_NS}]
        find(docs, "Role", binding["roleRef"]["name"], binding["metadata"]["namespace"])


# --- tests: Argo CD ----------------------------------------------------------------------------------------------


def sync_wave(doc: dict[str, Any]) -> int:
    return int((doc["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_crd_and_namespace_sync_before_the_operator_and_survive_pruning() -> None:
    docs = render("overlays/torghut")
    crd = find(docs, "CustomResourceDefinition", "torghutrollouts.torghut.proompteng.ai")
    options = crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"].split(",")
    assert {"Prune=false", "Delete=false", "ServerSideApply=true"} <= set(options)
    deployment_wave = sync_wave(operator_deployment("overlays/torghut"))
    assert sync_wave(crd) < deployment_wave
    assert sync_wave(find(docs, "Namespace", SYSTEM_NS)) < deployment_wave
    for doc in docs:
        if doc["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}:
            assert sync_wave(doc) < deployment_wave, f"{doc['kind']} must exist before the operator starts"


def test_argo_cd_applications_sync_what_their_project_allows() -> None:
    docs = render("argocd")
    projects = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "AppProject"}
    applications = [doc for doc in docs if doc["kind"] == "Application"]
    assert {app["spec"]["source"]["path"] for app in applications} == {
        "manifests/overlays/torghut",
        "manifests/monitoring",
    }
    for app in applications:
        spec = app["spec"]
        assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]
        project = projects[spec["project"]]["spec"]
        assert spec["source"]["repoURL"] in project["sourceRepos"]
        rendered = render(spec["source"]["path"].removeprefix("manifests/"))
        allowed_ns = {(d["server"], d["namespace"]) for d in project["destinations"]}
        cluster_kinds = {(k["group"], k["kind"]) for k in project["clusterResourceWhitelist"]}
        namespaced_kinds = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
        for doc in rendered:
            group = doc["apiVersion"].rpartition("/")[0]
            if doc["kind"] in CLUSTER_SCOPED:
                assert (group, doc["kind"]) in cluster_kinds, f"{doc['kind']} not allowed by the AppProject"
            else:
                assert (group, doc["kind"]) in namespaced_kinds, f"{doc['kind']} not allowed by the AppProject"
                assert (spec["destination"]["server"], doc["metadata"]["namespace"]) in allowed_ns
    operator_app = next(a for a in applications if a["spec"]["source"]["path"] == "manifests/overlays/torghut")
    monitoring_app = next(a for a in applications if a["spec"]["source"]["path"] == "manifests/monitoring")
    assert sync_wave(operator_app) < sync_wave(monitoring_app)


# --- tests: monitoring -------------------------------------------------------------------------------------------


def test_prometheusrule_embeds_the_rule_file_verbatim() -> None:
    monitoring = MANIFESTS / "monitoring"
    rules_text = (monitoring / "torghut-rollout-rules.yaml").read_text()
    resource_text = (monitoring / "prometheusrule.yaml").read_text()
    _, marker, body = resource_text.partition("\nspec:\n")
    assert marker, "prometheusrule.yaml has no top-level spec:"
    dedented = [line.removeprefix("  ") if line else line for line in body.splitlines()]
    assert all(line == "" or raw.startswith("  ") for line, raw in zip(dedented, body.splitlines(), strict=True))
    assert "\n".join(dedented) + "\n" == rules_text, (
        "prometheusrule.yaml differs from torghut-rollout-rules.yaml; regenerate it with the command in its header"
    )
    rendered = find(render("monitoring"), "PrometheusRule", "torghut-rollout", SYSTEM_NS)
    assert rendered["spec"] == yaml.safe_load(rules_text)


def test_servicemonitor_scrapes_the_operator_service_keeping_rollout_namespaces() -> None:
    operator_docs = render("overlays/torghut")
    service = find(operator_docs, "Service", f"{NAME}-metrics", SYSTEM_NS)
    pod_labels = operator_deployment("overlays/torghut")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in operator_container("overlays/torghut")["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in container_ports

    monitor = find(render("monitoring"), "ServiceMonitor", NAME, SYSTEM_NS)["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert SYSTEM_NS in monitor["namespaceSelector"]["matchNames"]
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["honorLabels"] is True, "the operator's `namespace` label names the rollout's namespace"
    job = service["metadata"]["labels"][monitor["jobLabel"]]
    rules = (MANIFESTS / "monitoring" / "torghut-rollout-rules.yaml").read_text()
    assert f'up{{job="{job}"}}' in rules, "TorghutRolloutOperatorDown must look for the job the ServiceMonitor sets"


def test_dashboard_configmap_is_a_grafana_dashboard_of_the_operator() -> None:
    configmap = find(render("monitoring"), "ConfigMap", "torghut-rollout-dashboard", SYSTEM_NS)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["torghut-rollout.json"])
    assert dashboard["uid"] == "torghut-rollout"
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Rollouts by phase",
        "Check verdicts",
        "Gate values",
        "Reconcile rate",
        "Reconcile errors",
        "Reconcile latency",
        "Event loop lag",
    } <= titles
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "torghut_rollout_phase",
        "torghut_rollout_check_verdict",
        "torghut_rollout_gate_value",
        "torghut_rollout_reconciles_total",
        "torghut_rollout_reconcile_errors_total",
        "torghut_rollout_reconcile_duration_seconds_bucket",
        "torghut_rollout_operator_loop_lag_seconds_bucket",
    ):
        assert re.search(rf"\b{metric}\b", exprs), f"no panel shows {metric}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


# --- tests: the image --------------------------------------------------------------------------------------------


def test_image_runs_as_the_non_root_user_the_pod_expects() -> None:
    stage = final_stage()
    users = [args for instruction, args in stage if instruction == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric USER lets the kubelet verify runAsNonRoot"
    assert int(uid) == operator_deployment("base")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] != 0
    assert any(instruction == "RUN" and f"--uid {uid}" in args for instruction, args in stage)
    exposed = {int(port) for instruction, args in stage if instruction == "EXPOSE" for port in args.split()}
    assert exposed == {p["containerPort"] for p in operator_container("base")["ports"]} == {8080, 9090}
