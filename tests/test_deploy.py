"""Deployment files: Kubernetes manifests, the compose scale-out, the Dockerfile, setup.sh's Redis.

Each check is a function returning the problems it finds, run on the repository's files
(no problem allowed) and on deliberately weakened copies in a tmp dir (the problem must be
named), so none of these tests can pass by checking nothing.
"""

import contextlib
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import REPO, RedisProcess, free_port

KUBERNETES = REPO / "deploy" / "kubernetes"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SETUP = REPO / "scripts" / "setup.sh"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod"}
SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN")


# -- Kubernetes --------------------------------------------------------------------------------


def manifest_files(root: Path) -> list[Path]:
    """Every YAML file under `root` but kustomization.yaml: each must be a complete object."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix in {".yaml", ".yml"} and path.name != "kustomization.yaml"
    )


def load_documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def validator() -> str:
    found = Path(sys.executable).with_name("kubernetes-validate")
    return str(found) if found.exists() else shutil.which("kubernetes-validate") or ""


def schema_problems(paths: list[Path]) -> list[str]:
    """`kubernetes-validate --strict` on each file: its ERROR lines, or its failure."""
    command = validator()
    assert command, "kubernetes-validate is not installed (pip install -e '.[test]')"
    result = subprocess.run(
        [command, "--strict", "--quiet", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    if result.returncode != 0 and not errors:
        errors.append(f"kubernetes-validate exited {result.returncode}: {result.stderr[-500:]}")
    return errors


def completeness_problems(root: Path) -> list[str]:
    """Files that hold no object, or an object without apiVersion, kind and metadata.name."""
    problems = []
    for path in manifest_files(root):
        documents = load_documents(path)
        if not documents:
            problems.append(f"{path.relative_to(root)}: no Kubernetes object")
        for document in documents:
            name = (document.get("metadata") or {}).get("name")
            if not (document.get("apiVersion") and document.get("kind") and name):
                problems.append(f"{path.relative_to(root)}: not a complete object")
    return problems


def kustomization_problems(root: Path) -> list[str]:
    """Every resource or patch a kustomization names exists; every manifest but the
    examples is used by some kustomization (nothing lies around unvalidated by a build)."""
    problems, used = [], set()
    for kustomization in root.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        entries = list(data.get("resources", []))
        entries += [patch["path"] for patch in data.get("patches", []) if "path" in patch]
        for entry in entries:
            target = (kustomization.parent / entry).resolve()
            if not target.exists():
                problems.append(f"{kustomization.relative_to(root)}: {entry} does not exist")
            used.add(target)
    for path in manifest_files(root):
        if "examples" not in path.relative_to(root).parts and path.resolve() not in used:
            problems.append(f"{path.relative_to(root)}: not in any kustomization")
    return problems


def pod_spec(document: dict) -> dict | None:
    if document.get("kind") == "Pod":
        return document.get("spec")
    if document.get("kind") in POD_KINDS:
        return document["spec"]["template"]["spec"]
    if document.get("kind") == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def security_problems(documents: list[dict]) -> list[str]:
    """Pods run as non-root on a read-only root filesystem, without privilege escalation or
    capabilities, under RuntimeDefault seccomp, with resources and probes, and take secrets
    from Secrets, never from literal values."""
    problems = []
    for document in documents:
        spec = pod_spec(document)
        if spec is None:
            continue
        where = f"{document['kind']}/{document['metadata']['name']}"
        pod = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: service account token mounted")
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                problems.append(f"{where}: hostPath volume {volume['name']}")
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            at = f"{where} container {container['name']}"
            own = container.get("securityContext") or {}
            merged = {**pod, **own}
            if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") == 0:
                problems.append(f"{at}: may run as root")
            if own.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: privilege escalation allowed")
            if own.get("privileged"):
                problems.append(f"{at}: privileged")
            if own.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: root filesystem writable")
            capabilities = own.get("capabilities") or {}
            if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
                problems.append(f"{at}: capabilities not all dropped")
            if (merged.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{at}: no RuntimeDefault seccomp profile")
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        problems.append(f"{at}: no {resource} {part}")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{at}: no {probe}")
            for variable in container.get("env", []):
                secret_like = any(word in variable["name"].upper() for word in SECRET_WORDS)
                if secret_like and "value" in variable:
                    problems.append(f"{at}: {variable['name']} is a literal, not a secretKeyRef")
    return problems


def container_env(container: dict, documents: list[dict]) -> dict[str, object]:
    """A container's environment: its ConfigMaps (envFrom), then its own env entries."""
    config_maps = {
        document["metadata"]["name"]: document.get("data", {})
        for document in documents
        if document.get("kind") == "ConfigMap"
    }
    values: dict[str, object] = {}
    for source in container.get("envFrom", []):
        name = (source.get("configMapRef") or {}).get("name")
        values.update(config_maps.get(name, {}))
    for variable in container.get("env", []):
        values[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return values


def redis_options(container: dict) -> dict[str, str]:
    """`--name value` pairs of a redis-server command line."""
    words = [*container.get("command", []), *container.get("args", [])]
    return {
        word[2:]: words[index + 1] for index, word in enumerate(words[:-1]) if word.startswith("--")
    }


def pods_behind(host: str, documents: list[dict]) -> list[dict]:
    """The workloads whose pods a Service named `host` selects."""
    services = [
        document
        for document in documents
        if document.get("kind") == "Service" and document["metadata"]["name"] == host
    ]
    found = []
    for service in services:
        selector = service["spec"].get("selector") or {}
        for document in documents:
            spec = pod_spec(document)
            if spec is None:
                continue
            labels = document["spec"]["template"]["metadata"].get("labels", {})
            if selector and all(labels.get(key) == value for key, value in selector.items()):
                found.append(document)
    return found


def memory_bytes(quantity: str) -> float:
    # Kubernetes binary suffixes, and Redis units (where "mb" means 1024 * 1024 bytes).
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    for suffix, factor in units.items():
        if quantity.lower().endswith(suffix.lower()):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity)


def wiring_problems(documents: list[dict]) -> list[str]:
    """The API's settings, its Redis and the objects that point at each other agree."""
    problems = []
    by_kind: dict[str, list[dict]] = {}
    for document in documents:
        by_kind.setdefault(document.get("kind", ""), []).append(document)
    deployments = [
        document
        for document in by_kind.get("Deployment", [])
        if document["metadata"]["name"] == "bertheads-api"
    ]
    if len(deployments) != 1:
        return ["no Deployment bertheads-api"]
    api = deployments[0]
    labels = api["spec"]["template"]["metadata"]["labels"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    env = container_env(container, documents)
    if env.get("HOST") != "0.0.0.0":
        problems.append("api: HOST is not 0.0.0.0")
    key = env.get("API_KEY")
    if not (isinstance(key, dict) and "secretKeyRef" in key):
        problems.append("api: API_KEY does not come from a secretKeyRef")
    if env.get("ALLOW_UNAUTHENTICATED_WRITES", "false") != "false":
        problems.append("api: unauthenticated writes allowed")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if (container.get(probe) or {}).get("httpGet", {}).get("path") != "/health":
            problems.append(f"api: {probe} is not an HTTP GET of /health")
    mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
    if "/tmp" not in mounts:
        problems.append("api: /tmp not writable on a read-only root filesystem")

    cache_url, store = str(env.get("REDIS_URL", "")), str(env.get("HEAD_STORE", ""))
    if urlsplit(store).scheme not in {"redis", "rediss"}:
        problems.append(f"api: HEAD_STORE {store!r} is not a Redis URL (replicas share no disk)")
    elif urlsplit(store).netloc == urlsplit(cache_url).netloc:
        problems.append("api: HEAD_STORE and REDIS_URL are one Redis instance")
    policies = {"HEAD_STORE": store, "REDIS_URL": cache_url}
    for setting, url in policies.items():
        for workload in pods_behind(urlsplit(url).hostname or "", documents):
            redis_container = workload["spec"]["template"]["spec"]["containers"][0]
            options = redis_options(redis_container)
            policy = options.get("maxmemory-policy", "noeviction")
            name = workload["metadata"]["name"]
            if setting == "HEAD_STORE":
                if policy != "noeviction":
                    problems.append(f"{name}: HEAD_STORE's Redis evicts ({policy})")
                if options.get("appendonly") != "yes":
                    problems.append(f"{name}: HEAD_STORE's Redis keeps no append-only file")
                if not workload["spec"].get("volumeClaimTemplates"):
                    problems.append(f"{name}: HEAD_STORE's Redis has no persistent volume")
            else:
                if not policy.startswith("allkeys-") or "maxmemory" not in options:
                    problems.append(f"{name}: the cache has no maxmemory with allkeys-* eviction")
                else:
                    limit = redis_container["resources"]["limits"]["memory"]
                    if memory_bytes(limit) < memory_bytes(options["maxmemory"]) * 1.2:
                        problems.append(
                            f"{name}: memory limit {limit} leaves no room over maxmemory"
                        )

    def selects(selector: dict) -> bool:
        wanted = selector.get("matchLabels", selector)
        return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", "bertheads-api"):
            problems.append(f"HPA {hpa['metadata']['name']}: scales {target['name']}")
        if hpa["spec"].get("minReplicas", 1) < 2:
            problems.append("HPA: fewer than 2 replicas leaves no pod during a disruption")
    if not by_kind.get("HorizontalPodAutoscaler"):
        problems.append("no HorizontalPodAutoscaler")
    if not any(selects(pdb["spec"]["selector"]) for pdb in by_kind.get("PodDisruptionBudget", [])):
        problems.append("no PodDisruptionBudget selects the API pods")
    if not any(
        selects(service["spec"].get("selector", {})) for service in by_kind.get("Service", [])
    ):
        problems.append("no Service selects the API pods")
    if "replicas" in api["spec"]:
        problems.append("api: replicas fixed in the Deployment fights the autoscaler")
    return problems


def all_documents(root: Path) -> list[dict]:
    """Objects of every manifest, patches and examples excluded (they are not deployed as is)."""
    return [
        document
        for path in manifest_files(root)
        if not {"examples", "patches"} & set(path.relative_to(root).parts)
        for document in load_documents(path)
    ]


def kubernetes_problems(root: Path) -> list[str]:
    """Everything but the schema validation (slower, run on its own)."""
    documents = all_documents(root)
    return (
        completeness_problems(root)
        + kustomization_problems(root)
        + security_problems(documents)
        + wiring_problems(documents)
        + example_secret_problems(root)
    )


def example_secret_problems(root: Path) -> list[str]:
    problems = []
    for path in manifest_files(root):
        for document in load_documents(path):
            if document.get("kind") != "Secret":
                continue
            if "examples" not in path.relative_to(root).parts:
                problems.append(f"{path.relative_to(root)}: a Secret outside examples/")
            values = {**document.get("stringData", {}), **document.get("data", {})}
            if not all("REPLACE" in str(value) for value in values.values()):
                problems.append(f"{path.relative_to(root)}: a Secret that is not a placeholder")
    return problems


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def overlays(root: Path) -> list[Path]:
    return sorted(path.parent for path in (root / "overlays").glob("*/kustomization.yaml"))


def test_every_manifest_is_a_complete_object_and_passes_the_lint() -> None:
    assert manifest_files(KUBERNETES)
    assert kubernetes_problems(KUBERNETES) == []


def test_every_manifest_passes_strict_schema_validation() -> None:
    files = manifest_files(KUBERNETES)
    assert len(files) >= 12
    assert schema_problems(files) == []


def test_kustomize_builds_validate_and_pass_the_lint(tmp_path: Path) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: builds not checked")
    assert overlays(KUBERNETES), "no overlay"
    for overlay in overlays(KUBERNETES):
        built = subprocess.run(
            [*command, str(overlay)], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        output = tmp_path / f"{overlay.name}.yaml"
        output.write_text(built)
        assert schema_problems([output]) == [], overlay.name
        documents = [document for document in yaml.safe_load_all(built) if document]
        assert all(
            document["metadata"].get("namespace") == "bertheads"
            for document in documents
            if document["kind"] != "Namespace"
        )
        assert security_problems(documents) == [], overlay.name
        assert wiring_problems(documents) == [], overlay.name


def test_schema_validation_rejects_an_unknown_field_and_a_partial_object(tmp_path: Path) -> None:
    hpa = yaml.safe_load((KUBERNETES / "base" / "api-hpa.yaml").read_text())
    hpa["spec"]["minReplica"] = 2
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(hpa))
    partial = tmp_path / "partial.yaml"
    partial.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n")
    problems = schema_problems([typo, partial, KUBERNETES / "base" / "api-pdb.yaml"])
    assert len(problems) == 2
    assert "minReplica" in problems[0] or "minReplica" in problems[1]


def edit_yaml(path: Path, change: Callable[[dict], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def api_container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def make_root(deployment: dict) -> None:
    deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    del deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    del api_container(deployment)["securityContext"]["runAsNonRoot"]


def literal_key(deployment: dict) -> None:
    for variable in api_container(deployment)["env"]:
        if variable["name"] == "API_KEY":
            variable.pop("valueFrom")
            variable["value"] = "hunter2"


BASE = "base/api-deployment.yaml"
WEAKENINGS: dict[str, tuple[str, Callable[[dict], None], str]] = {
    "root": (BASE, make_root, "may run as root"),
    "writable root": (
        BASE,
        lambda d: api_container(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "root filesystem writable",
    ),
    "escalation": (
        BASE,
        lambda d: api_container(d)["securityContext"].pop("allowPrivilegeEscalation"),
        "privilege escalation allowed",
    ),
    "capabilities": (
        BASE,
        lambda d: api_container(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "capabilities not all dropped",
    ),
    "seccomp": (
        BASE,
        lambda d: d["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile"),
        "no RuntimeDefault seccomp",
    ),
    "limits": (BASE, lambda d: api_container(d)["resources"].pop("limits"), "no memory limits"),
    "readiness": (BASE, lambda d: api_container(d).pop("readinessProbe"), "no readinessProbe"),
    "startup": (
        BASE,
        lambda d: api_container(d).pop("startupProbe"),
        "startupProbe is not an HTTP GET of /health",
    ),
    "literal key": (BASE, literal_key, "API_KEY is a literal"),
    "token": (
        BASE,
        lambda d: d["spec"]["template"]["spec"].pop("automountServiceAccountToken"),
        "service account token mounted",
    ),
    "fixed replicas": (BASE, lambda d: d["spec"].update(replicas=3), "fights the autoscaler"),
    "heads on the cache": (
        "base/api-configmap.yaml",
        lambda d: d["data"].update(HEAD_STORE=d["data"]["REDIS_URL"]),
        "one Redis instance",
    ),
    "heads in a folder": (
        "base/api-configmap.yaml",
        lambda d: d["data"].update(HEAD_STORE="/models"),
        "is not a Redis URL",
    ),
    "state evicts": (
        "redis/redis-state-statefulset.yaml",
        lambda d: api_container(d)["command"].__setitem__(6, "volatile-lru"),
        "HEAD_STORE's Redis evicts (volatile-lru)",
    ),
    "cache unbounded": (
        "redis/redis-cache-statefulset.yaml",
        lambda d: api_container(d)["command"].__setitem__(6, "noeviction"),
        "no maxmemory with allkeys-* eviction",
    ),
    "redis root": (
        "redis/redis-cache-statefulset.yaml",
        lambda d: d["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
        "may run as root",
    ),
    "pdb elsewhere": (
        "base/api-pdb.yaml",
        lambda d: d["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "other"}),
        "no PodDisruptionBudget selects",
    ),
    "real secret": (
        "examples/api-key-secret.yaml",
        lambda d: d["stringData"].update(API_KEY="0123456789abcdef"),
        "not a placeholder",
    ),
}


@pytest.mark.parametrize("weakening", sorted(WEAKENINGS))
def test_the_lint_names_each_weakening(tmp_path: Path, weakening: str) -> None:
    relative, change, expected = WEAKENINGS[weakening]
    root = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, root)
    edit_yaml(root / relative, change)
    problems = kubernetes_problems(root)
    assert any(expected in problem for problem in problems), problems


def test_the_lint_names_a_partial_object_and_a_stray_file(tmp_path: Path) -> None:
    root = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, root)
    (root / "base" / "partial.yaml").write_text("spec:\n  replicas: 2\n")
    problems = kubernetes_problems(root)
    assert "base/partial.yaml: not a complete object" in problems
    assert "base/partial.yaml: not in any kustomization" in problems


# -- docker compose ------------------------------------------------------------------------------


def compose_problems(path: Path) -> list[str]:
    """Scale-out invariants of a compose file."""
    data = yaml.safe_load(path.read_text())
    services: dict[str, dict] = data.get("services", {})
    problems = []
    balancers = [
        name
        for name, service in services.items()
        if str(service.get("image", "")).split(":")[0] in {"nginx", "traefik"}
    ]
    if not balancers:
        problems.append("no load balancer from an official nginx or traefik image")
    for name in balancers:
        if not services[name].get("ports"):
            problems.append(f"{name}: publishes no port")
        for mount in services[name].get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith(".") and not (path.parent / source).is_file():
                problems.append(f"{name}: {source} does not exist")
    api = services.get("api")
    if api is None:
        return [*problems, "no api service"]
    for port in api.get("ports", []):
        fixed = port.get("published") if isinstance(port, dict) else ":" in str(port)
        if fixed:
            problems.append(f"api: fixed host port {port}, so --scale api=3 cannot start")
    if "container_name" in api:
        problems.append("api: container_name prevents scaling")
    if api.get("volumes"):
        problems.append(f"api: shares volumes {api['volumes']} (heads belong in HEAD_STORE)")
    if api.get("read_only") is not True:
        problems.append("api: root filesystem writable")
    if "healthcheck" not in api:
        problems.append("api: no healthcheck")
    env = api.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    if env.get("HOST") != "0.0.0.0":
        problems.append("api: HOST is not 0.0.0.0")
    key = env.get("API_KEY")
    if key is not None and not str(key).startswith("${API_KEY"):
        problems.append("api: API_KEY is a literal, not taken from the environment")
    allow = str(env.get("ALLOW_UNAUTHENTICATED_WRITES", "false"))
    if allow not in {"false", "${ALLOW_UNAUTHENTICATED_WRITES:-false}"}:
        problems.append("api: unauthenticated writes allowed by default")
    cache_host = urlsplit(str(env.get("REDIS_URL", ""))).hostname
    store = urlsplit(str(env.get("HEAD_STORE", "")))
    if store.scheme != "redis":
        problems.append("api: HEAD_STORE is not a Redis URL, so replicas would share files")
    elif store.hostname == cache_host:
        problems.append("api: HEAD_STORE and REDIS_URL are one Redis instance")
    for setting, host in (("REDIS_URL", cache_host), ("HEAD_STORE", store.hostname)):
        if not host:
            problems.append(f"api: {setting} names no Redis host")
            continue
        service = services.get(host)
        if service is None:
            problems.append(f"{setting}: no service {host}")
            continue
        if "healthcheck" not in service:
            problems.append(f"{host}: no healthcheck")
        if host not in api.get("depends_on", {}):
            problems.append(f"api: does not wait for {host}")
        options = redis_options(service)
        policy = options.get("maxmemory-policy", "noeviction")
        if setting == "REDIS_URL":
            if not policy.startswith("allkeys-") or "maxmemory" not in options:
                problems.append(f"{host}: the cache has no maxmemory with allkeys-* eviction")
            if options.get("appendonly") != "no" or options.get("save") != "":
                problems.append(f"{host}: the cache persists to disk")
        else:
            if policy != "noeviction":
                problems.append(f"{host}: HEAD_STORE's Redis evicts ({policy})")
            if options.get("appendonly") != "yes":
                problems.append(f"{host}: HEAD_STORE's Redis keeps no append-only file")
            if not any(str(mount).endswith(":/data") for mount in service.get("volumes", [])):
                problems.append(f"{host}: HEAD_STORE's Redis keeps /data on no volume")
    return problems


def test_compose_scales_out_behind_a_load_balancer() -> None:
    assert compose_problems(COMPOSE) == []
    nginx = (REPO / "deploy" / "compose" / "nginx.conf").read_text()
    assert "server api:8000 resolve" in nginx  # re-resolved: replicas added later get traffic
    assert "client_max_body_size 4m" in nginx  # above MAX_BODY_BYTES: the API answers 413


COMPOSE_WEAKENINGS: dict[str, tuple[Callable[[dict], None], str]] = {
    "host port": (
        lambda d: d["services"]["api"].update(ports=["8000:8000"]),
        "fixed host port 8000:8000",
    ),
    "no balancer": (lambda d: d["services"].pop("lb"), "no load balancer"),
    "shared models": (
        lambda d: d["services"]["api"].update(volumes=["models:/models"]),
        "shares volumes",
    ),
    "folder heads": (
        lambda d: d["services"]["api"]["environment"].update(HEAD_STORE="/models"),
        "HEAD_STORE is not a Redis URL",
    ),
    "heads on the cache": (
        lambda d: d["services"]["api"]["environment"].update(HEAD_STORE="redis://redis-cache/1"),
        "one Redis instance",
    ),
    "state evicts": (
        lambda d: d["services"]["redis-state"]["command"].__setitem__(4, "allkeys-lru"),
        "HEAD_STORE's Redis evicts (allkeys-lru)",
    ),
    "cache unbounded": (
        lambda d: d["services"]["redis-cache"]["command"].__setitem__(4, "noeviction"),
        "the cache has no maxmemory",
    ),
    "literal key": (
        lambda d: d["services"]["api"]["environment"].update(API_KEY="changeme"),
        "API_KEY is a literal",
    ),
    "open writes": (
        lambda d: d["services"]["api"]["environment"].update(ALLOW_UNAUTHENTICATED_WRITES="true"),
        "unauthenticated writes allowed",
    ),
    "no healthcheck": (lambda d: d["services"]["api"].pop("healthcheck"), "api: no healthcheck"),
}


@pytest.mark.parametrize("weakening", sorted(COMPOSE_WEAKENINGS))
def test_the_compose_check_names_each_weakening(tmp_path: Path, weakening: str) -> None:
    change, expected = COMPOSE_WEAKENINGS[weakening]
    shutil.copytree(REPO / "deploy" / "compose", tmp_path / "deploy" / "compose")
    data = copy.deepcopy(yaml.safe_load(COMPOSE.read_text()))
    change(data)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    problems = compose_problems(broken)
    assert any(expected in problem for problem in problems), problems


def test_docker_compose_accepts_the_file() -> None:
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        pytest.skip("neither docker compose nor docker-compose is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# -- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_problems(path: Path) -> list[str]:
    lines = path.read_text().replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    problems = []
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    if not users or users[-1].split(":")[0] in {"0", "root"}:
        problems.append("runs as root")
    elif not users[-1].split(":")[0].isdigit():
        problems.append("USER is a name: runAsNonRoot cannot check it")
    prepare = [i for i, line in enumerate(instructions) if "python -m embedder.prepare" in line]
    user_at = max(i for i, line in enumerate(instructions) if line.startswith(("USER ", "FROM")))
    if not prepare or prepare[0] > user_at:
        problems.append("model files are not built at image build (python -m embedder.prepare)")
    if not any(line.startswith("HEALTHCHECK") and "/health" in line for line in instructions):
        problems.append("no HEALTHCHECK on /health")
    if not any(line.startswith("ENV") and "HOST=0.0.0.0" in line for line in instructions):
        problems.append("HOST is not 0.0.0.0")
    if not any(line.startswith("CMD") and '"-m", "api"' in line for line in instructions):
        problems.append("CMD is not python -m api")
    return problems


def test_dockerfile_builds_the_model_and_runs_as_a_non_root_user(tmp_path: Path) -> None:
    assert dockerfile_problems(DOCKERFILE) == []
    weakened = DOCKERFILE.read_text().replace("USER 10001:10001", "USER root")
    weakened = weakened.replace("python -m embedder.prepare", "true")
    (tmp_path / "Dockerfile").write_text(weakened)
    assert dockerfile_problems(tmp_path / "Dockerfile") == [
        "runs as root",
        "model files are not built at image build (python -m embedder.prepare)",
    ]


# -- setup.sh's Redis ----------------------------------------------------------------------------


def ensure_redis(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Source setup.sh (functions only) and run ensure_redis with these settings."""
    return subprocess.run(
        ["bash", "-c", f"source {SETUP} && ensure_redis"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def spare_ports() -> Iterator[list[int]]:
    """Two free ports; whatever Redis the test left on them is shut down after it."""
    ports = [free_port()]
    while len(ports) < 2:
        port = free_port()
        if port not in ports:
            ports.append(port)
    yield ports
    for port in ports:
        shut_down(port)


def shut_down(port: int) -> None:
    """SHUTDOWN NOSAVE the Redis on `port`, if one answers (no retries: none may)."""
    client = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.RedisError):
        client.shutdown(nosave=True)


def config(port: int, name: str) -> str:
    return redis.Redis(port=port, decode_responses=True).config_get(name)[name]


def test_setup_starts_an_evicting_cache_and_no_state_store_by_default(
    spare_ports: list[int],
) -> None:
    cache = spare_ports[0]
    result = ensure_redis({"REDIS_URL": f"redis://127.0.0.1:{cache}/0", "HEAD_STORE": ""})
    assert result.returncode == 0, result.stderr
    assert "head store" not in result.stdout  # a folder head store needs no state Redis
    assert config(cache, "maxmemory-policy") == "allkeys-lru"
    assert int(config(cache, "maxmemory")) == 2 * 2**30
    assert config(cache, "appendonly") == "no"
    assert config(cache, "save") == ""


def test_setup_starts_a_non_evicting_durable_state_store_for_a_redis_head_store(
    tmp_path: Path, spare_ports: list[int]
) -> None:
    cache, state = spare_ports
    result = ensure_redis(
        {
            "REDIS_URL": f"redis://127.0.0.1:{cache}/0",
            "HEAD_STORE": f"redis://localhost:{state}/2",
            "REDIS_STATE_DIR": str(tmp_path / "state"),
            "REDIS_MAXMEMORY": "64mb",
        }
    )
    assert result.returncode == 0, result.stderr
    assert config(cache, "maxmemory-policy") == "allkeys-lru"
    assert int(config(cache, "maxmemory")) == 64 * 2**20
    assert config(state, "maxmemory-policy") == "noeviction"
    assert config(state, "appendonly") == "yes"
    assert config(state, "appendfsync") == "always"
    assert config(state, "dir") == str(tmp_path / "state")
    # A head written there survives a restart of that Redis.
    redis.Redis(port=state, db=2).set("bertheads:test:head", b"weights")
    shut_down(state)
    restarted = ensure_redis(
        {
            "REDIS_URL": f"redis://127.0.0.1:{cache}/0",
            "HEAD_STORE": f"redis://127.0.0.1:{state}/2",
            "REDIS_STATE_DIR": str(tmp_path / "state"),
        }
    )
    assert restarted.returncode == 0, restarted.stderr
    assert redis.Redis(port=state, db=2).get("bertheads:test:head") == b"weights"


def test_setup_refuses_heads_on_the_cache_instance(spare_ports: list[int]) -> None:
    cache = spare_ports[0]
    result = ensure_redis(
        {"REDIS_URL": f"redis://127.0.0.1:{cache}/0", "HEAD_STORE": f"redis://localhost:{cache}/1"}
    )
    assert result.returncode != 0
    assert "one Redis instance" in result.stderr
    assert "eviction policy is per instance" in result.stderr


def test_setup_refuses_a_head_store_that_evicts(spare_ports: list[int]) -> None:
    cache, state = spare_ports
    server = RedisProcess(state)
    server.start()
    try:
        redis.Redis(port=state).config_set("maxmemory-policy", "volatile-lru")
        result = ensure_redis(
            {
                "REDIS_URL": f"redis://127.0.0.1:{cache}/0",
                "HEAD_STORE": f"redis://127.0.0.1:{state}/0",
            }
        )
    finally:
        server.kill()
    assert result.returncode != 0
    assert "maxmemory-policy volatile-lru" in result.stderr
    assert "config set maxmemory-policy noeviction" in result.stderr
