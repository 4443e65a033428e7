"""The deployment commands the docs tell users to run, run or rendered without a cluster or a
Docker daemon:

- **Compose**: every `docker compose` / `docker-compose` command in README.md and docs/ (code
  blocks and inline) is rendered with its own files, profiles and variables
  (`docker-compose ... config`), and the services it names exist. The default file set (what
  `docker compose up` loads: docker-compose.yml + docker-compose.override.yml) publishes
  exactly the ports the server listens on, gRPC, HTTP and metrics, and the Dockerfile exposes
  them; the host-network set publishes none.
- **Kubernetes**: docs/kubernetes.md's code blocks run as written in bash, in a copy of the
  repository's deploy/, with `docker` and the cluster side of `kubectl` replaced by a
  recorder. `kubectl kustomize` is the real one, and each `kubectl apply -k DIR` renders DIR
  with it. Then: every rendered object validates strictly (kubernetes-validate; KServe's own
  kinds excepted), every server container runs an image the page built and pushed, and each
  `rollout status`, `port-forward`, `-l` selector and `set image` names something the applied
  manifests have.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
KUBERNETES_PAGE = REPO / "docs" / "kubernetes.md"
SERVER_PORT_VARIABLES = ("LATENTSERVE_PORT", "LATENTSERVE_HTTP_PORT", "LATENTSERVE_METRICS_PORT")
# The doc's own override for TLS requires a token in the environment (`${...:?set a token}`).
COMPOSE_ENV = {"LATENTSERVE_AUTH_TOKEN": "docs-test-token"}
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", flags=re.S | re.M)


# -- Compose ---------------------------------------------------------------------------------------


def compose_binary() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.skip("neither docker-compose (v1) nor the docker compose plugin (v2) is installed")


def command_lines(text: str) -> list[str]:
    """Shell lines of bash blocks (continuations joined, comments cut) and inline code."""
    lines = []
    for block in BASH_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.split(" #")[0].strip())
    lines += re.findall(r"`([^`\n]+)`", BASH_BLOCK.sub("", text))
    return lines


@dataclass
class ComposeCommand:
    doc: str
    line: str
    env: dict[str, str]
    files: list[str]
    profiles: list[str]
    subcommand: str
    service: str | None


def parse_compose(doc: str, line: str) -> ComposeCommand | None:
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[:2] == ["docker", "compose"]:
        words = words[2:]
    elif words[:1] == ["docker-compose"]:
        words = words[1:]
    else:
        return None
    files, profiles = [], []
    while words and words[0].startswith("-"):
        option = words.pop(0)
        value = words.pop(0) if option in ("-f", "--file", "-p", "--profile") else ""
        if option in ("-f", "--file"):
            files.append(value)
        elif option == "--profile":
            profiles.append(value)
    if not words or words[0] in ("version", "...", "COMMAND"):
        return None
    subcommand, args = words[0], words[1:]
    service = None
    if subcommand in ("up", "exec", "run", "stop", "restart", "build", "logs", "start"):
        while args and args[0].startswith("-"):
            option = args.pop(0)
            if option in ("-t", "--timeout", "-e", "-u", "-w") and args:
                args.pop(0)
        service = args[0] if args and args[0] != "..." else None
    return ComposeCommand(doc, line, env, files, profiles, subcommand, service)


def compose_commands() -> list[ComposeCommand]:
    found = []
    for doc in DOCS:
        for line in command_lines(doc.read_text()):
            parsed = parse_compose(str(doc.relative_to(REPO)), line)
            if parsed is not None:
                found.append(parsed)
    return found


COMPOSE_COMMANDS = compose_commands()


@pytest.fixture(scope="module")
def compose_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What compose reads (compose files, Dockerfiles, deploy/), plus the override files the
    docs tell users to write themselves, from the docs' own YAML."""
    folder = tmp_path_factory.mktemp("compose")
    for path in REPO.glob("docker-compose*.yml"):
        shutil.copy(path, folder)
    for name in ("Dockerfile", "Dockerfile.train"):
        shutil.copy(REPO / name, folder)
    shutil.copytree(REPO / "deploy", folder / "deploy")
    for doc in DOCS:
        text = doc.read_text()
        for name, body in re.findall(
            r"`(docker-compose\.\w+\.yml)`:\n\n```yaml\n(.*?)```", text, re.S
        ):
            (folder / name).write_text(body)
    return folder


RENDERED: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}


def render(project: Path, command: ComposeCommand, *args: str) -> subprocess.CompletedProcess[str]:
    """`compose [files] [profiles] ARGS` with the command's variables (once per combination:
    each compose start costs a second)."""
    key = (
        str(project),
        *command.files,
        "|",
        *command.profiles,
        "|",
        *sorted(f"{k}={v}" for k, v in command.env.items()),
        "|",
        *args,
    )
    if key not in RENDERED:
        RENDERED[key] = _render(project, command, *args)
    return RENDERED[key]


def _render(project: Path, command: ComposeCommand, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [f for name in command.files for f in ("-f", name)]
    flags += [f for profile in command.profiles for f in ("--profile", profile)]
    return subprocess.run(
        [*compose_binary(), *flags, *args],
        cwd=project,
        env={**os.environ, **COMPOSE_ENV, **command.env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_docs_have_compose_commands():
    subcommands = {c.subcommand for c in COMPOSE_COMMANDS}
    assert {"up", "ps", "exec", "run", "stop", "build"} <= subcommands, subcommands
    assert any(c.files == ["docker-compose.scale.yml"] for c in COMPOSE_COMMANDS)


@pytest.mark.parametrize(
    "command", COMPOSE_COMMANDS, ids=[f"{c.doc}: {c.line[:70]}" for c in COMPOSE_COMMANDS]
)
def test_compose_command_renders_and_names_real_services(compose_project, command):
    rendered = render(compose_project, command, "config", "-q")
    assert rendered.returncode == 0, (command.line, rendered.stderr)
    if command.service is not None:
        services = render(compose_project, command, "config", "--services").stdout.split()
        assert command.service in services, (command.line, services)


def default_config(project: Path, files: list[str]) -> dict[str, Any]:
    command = ComposeCommand("", "", {}, files, [], "config", None)
    rendered = render(project, command, "config")
    assert rendered.returncode == 0, rendered.stderr
    config: dict[str, Any] = yaml.safe_load(rendered.stdout)
    return config


def test_default_compose_publishes_every_port_the_server_listens_on(compose_project):
    service = default_config(compose_project, [])["services"]["latentserve"]
    environment = service["environment"]
    listening = {int(environment[name]) for name in SERVER_PORT_VARIABLES}
    assert listening == {50051, 8000, 9090}
    published = {(int(p["published"]), int(p["target"])) for p in service["ports"]}
    assert published == {(port, port) for port in listening}
    exposed = re.search(r"^EXPOSE (.+)$", (REPO / "Dockerfile").read_text(), flags=re.M)
    assert exposed is not None and {int(p) for p in exposed.group(1).split()} == listening


def test_host_network_compose_publishes_nothing(compose_project):
    config = default_config(compose_project, ["docker-compose.yml", "docker-compose.host.yml"])
    service = config["services"]["latentserve"]
    assert service["network_mode"] == "host" and not service.get("ports")
    assert int(service["environment"]["LATENTSERVE_HTTP_PORT"]) == 8000


# -- Kubernetes ------------------------------------------------------------------------------

RECORDER = """\
import json, os, subprocess, sys

prog, args = sys.argv[1], sys.argv[2:]
entry = {"prog": prog, "args": args}
status = 0
if prog == "kubectl" and args[:1] == ["kustomize"]:
    os.execv(os.environ["REAL_KUBECTL"], ["kubectl", *args])
if prog == "kubectl" and args[:1] == ["apply"] and "-k" in args:
    folder = args[args.index("-k") + 1]
    done = subprocess.run(
        [os.environ["REAL_KUBECTL"], "kustomize", folder], capture_output=True, text=True
    )
    entry["rendered"] = done.stdout
    sys.stderr.write(done.stderr)
    status = done.returncode
with open(os.environ["RECORD"], "a") as record:
    record.write(json.dumps(entry) + "\\n")
sys.exit(status)
"""
RECORDED = ("docker", "kubectl", "kind", "minikube", "k3d", "latent-client", "curl")
SERVER_CONTAINERS = ("latentserve", "kserve-container")
KSERVE_GROUP = "serving.kserve.io/"


@pytest.fixture(scope="module")
def kubernetes_page_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize folders")
    work = tmp_path_factory.mktemp("kubernetes-page")
    checkout = work / "checkout"
    checkout.mkdir()
    shutil.copytree(REPO / "deploy", checkout / "deploy")
    shutil.copy(REPO / "Dockerfile", checkout)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "recorder.py"
    recorder.write_text(RECORDER)
    for name in RECORDED:
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{recorder}" {name} "$@"\n')
        wrapper.chmod(0o755)
    blocks = BASH_BLOCK.findall(KUBERNETES_PAGE.read_text())
    script = "set -euo pipefail\n" + "\n".join(blocks)
    record = work / "record.jsonl"
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=checkout,
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "REAL_KUBECTL": kubectl,
            "RECORD": str(record),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "image: registry.example.com/team/latentserve:0.1.0" in done.stdout, done.stdout
    return [json.loads(line) for line in record.read_text().splitlines()]


def _words(entry: dict[str, Any]) -> list[str]:
    return [entry["prog"], *entry["args"]]


def test_the_page_builds_pushes_applies_and_rolls_out(kubernetes_page_run):
    run = [" ".join(_words(e)) for e in kubernetes_page_run]
    kinds = [w.split()[:2] for w in run]
    for step in (
        ["docker", "build"],
        ["docker", "push"],
        ["kubectl", "apply"],
        ["kubectl", "rollout"],
        ["kubectl", "describe"],
        ["kubectl", "port-forward"],
    ):
        assert step in kinds, (step, run)
    # Build before push before apply: the cluster can only pull what was pushed.
    first = {tuple(k): kinds.index(k) for k in (["docker", "build"], ["docker", "push"])}
    assert (
        first[("docker", "build")] < first[("docker", "push")] < kinds.index(["kubectl", "apply"])
    )


def test_each_build_uses_this_repository_dockerfile(kubernetes_page_run):
    dockerfile = (REPO / "Dockerfile").read_text()
    for entry in kubernetes_page_run:
        args = entry["args"]
        if entry["prog"] == "docker" and args[:1] == ["build"]:
            assert args[-1] == "." and "-t" in args, args
            for i, arg in enumerate(args):
                if arg == "--build-arg":
                    name = args[i + 1].partition("=")[0]
                    assert re.search(rf"^ARG {name}\b", dockerfile, flags=re.M), name


def rendered_objects(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(entry["rendered"]) if doc]


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for obj in objects:
        if obj["kind"] == "Deployment":
            specs.append(obj["spec"]["template"]["spec"])
        elif obj["kind"] == "ServingRuntime":
            specs.append(obj["spec"])
    return specs


def test_applied_objects_validate_and_run_the_pushed_image(kubernetes_page_run):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    pushed: set[str] = set()
    applied = 0
    for entry in kubernetes_page_run:
        args = entry["args"]
        if entry["prog"] == "docker" and args[:1] == ["push"]:
            pushed.add(args[-1])
        if entry["prog"] != "kubectl" or args[:1] != ["apply"]:
            continue
        applied += 1
        objects = rendered_objects(entry)
        assert objects, args
        for obj in objects:
            if not obj["apiVersion"].startswith(KSERVE_GROUP):
                kubernetes_validate.validate(obj, version, strict=True)
        images = [
            c["image"]
            for spec in pod_specs(objects)
            for c in spec["containers"]
            if c["name"] in SERVER_CONTAINERS
        ]
        assert images, f"no server container in {args}"
        assert set(images) <= pushed, (args, images, pushed)
    assert applied >= 4  # the overlay, its new version, the GPU overlay, KServe


def test_named_objects_exist_in_what_was_applied(kubernetes_page_run):
    deployments: dict[str, dict[str, Any]] = {}
    services: dict[str, dict[str, Any]] = {}
    pushed: set[str] = set()
    checked = 0
    for entry in kubernetes_page_run:
        prog, args = entry["prog"], entry["args"]
        if prog == "docker" and args[:1] == ["push"]:
            pushed.add(args[-1])
        if prog != "kubectl":
            continue
        if args[:1] == ["apply"]:
            for obj in rendered_objects(entry):
                if obj["kind"] == "Deployment":
                    deployments[obj["metadata"]["name"]] = obj
                elif obj["kind"] == "Service":
                    services[obj["metadata"]["name"]] = obj
        elif args[:2] == ["rollout", "status"] or args[:2] == ["rollout", "undo"]:
            kind, _, name = args[2].partition("/")
            assert kind == "deployment" and name in deployments, args
            checked += 1
        elif args[:1] == ["port-forward"]:
            kind, _, name = args[1].partition("/")
            assert kind == "service" and name in services, args
            ports = {p["port"] for p in services[name]["spec"]["ports"]}
            for mapping in args[2:]:
                assert int(mapping.rpartition(":")[2]) in ports, (mapping, ports)
            checked += 1
        elif "-l" in args:
            key, _, value = args[args.index("-l") + 1].partition("=")
            labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
            assert any(lab.get(key) == value for lab in labels), args
            checked += 1
        elif args[:2] == ["set", "image"]:
            name = args[2].partition("/")[2]
            container, _, image = args[3].partition("=")
            spec = deployments[name]["spec"]["template"]["spec"]
            assert container in {c["name"] for c in spec["containers"]}, args
            assert image in pushed, args
            checked += 1
    assert checked >= 5
