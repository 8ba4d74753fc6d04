"""deploy/ stays honest: every file parses, every command, flag and METRICS_HUB_* variable it
names exists (checked against `--help` and the configuration specs), values are valid, and
ports, probe paths and stop timeouts match what the code does."""

from __future__ import annotations

import configparser
import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.settings import SPEC as COLLECTOR_SPEC
from gateway.config import SPEC as GATEWAY_SPEC
from hub.cli import COMMANDS
from hub.config import CONFIG_ENV, ConfigSpec
from hub.demo import SPEC as DEMO_SPEC
from hub.simulate import SPEC as SIMULATE_SPEC
from hub.status import STATUS_SPEC, TAIL_SPEC
from tests.live import gateway, http_get, ready, wait_until
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SPECS: dict[str, ConfigSpec[Any]] = {
    "collector": COLLECTOR_SPEC, "gateway": GATEWAY_SPEC, "status": STATUS_SPEC,
    "tail": TAIL_SPEC, "demo": DEMO_SPEC, "hub.simulate": SIMULATE_SPEC,
}
DOCS = [DEPLOY / "README.md", REPO / "docs" / "operations.md", REPO / "docs" / "demo.md"]
PROBES = {"/healthz", "/readyz"}


# -- what the code says -----------------------------------------------------------------------
def env_names(spec: ConfigSpec[Any]) -> set[str]:
    names = {CONFIG_ENV}
    for option in spec.options:
        names.add(option.env)
        if option.section_env:
            names.add(option.section_env)
    return names


@functools.cache
def help_flags(command: str) -> frozenset[str]:
    """The flags `metrics-hub COMMAND --help` (or `python -m hub.simulate --help`) prints."""
    argv = ([sys.executable, "-m", command, "--help"] if command == "hub.simulate"
            else [sys.executable, "-m", "hub.cli", command, "--help"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out))


def check_command(argv: list[str], where: str) -> str:
    """Check ``argv`` (after the program) names a subcommand and only its flags; return it."""
    assert argv, f"{where}: no command"
    command = argv[0]
    assert command in COMMANDS or command == "hub.simulate", f"{where}: unknown {command!r}"
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--"):
            assert flag in help_flags(command), f"{where}: {command} has no {flag}"
    return command


def check_env(command: str, env: Mapping[str, str], where: str) -> Any:
    """Every METRICS_HUB_* variable is the command's, and together they load without error;
    returns the settings they give."""
    spec = SPECS[command]
    for name in env:
        if name.startswith("METRICS_HUB_"):
            assert name in env_names(spec), f"{where}: {command} does not read {name}"
    return spec.load([], environ={k: v for k, v in env.items() if k.startswith("METRICS_HUB_")}
                     ).settings


# -- systemd --------------------------------------------------------------------------------
def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not Key=Value: {raw!r}"
        assert current is not None, f"{path.name}:{number}: outside a section"
        assert re.fullmatch(r"[A-Z][A-Za-z]+", key), f"{path.name}:{number}: bad key {key!r}"
        current.setdefault(key, []).append(value)
    return sections


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=value: {raw!r}"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}:{number}: {raw!r}"
        env[key] = value
    return env


def seconds(text: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|ms)?", text.strip())
    assert found, f"not a duration: {text!r}"
    value = float(found[1])
    return value * {"s": 1, None: 1, "min": 60, "ms": 0.001}[found[2]]


@pytest.mark.parametrize("name", ["collector", "gateway"])
def test_systemd_units(name: str) -> None:
    """The unit parses, runs `metrics-hub NAME` from its environment file (whose variables
    all exist and load), is hardened, restarts on failure, and waits long enough on stop."""
    unit = parse_unit(DEPLOY / "systemd" / f"metrics-hub-{name}.service")
    service = unit["Service"]
    assert set(unit) == {"Unit", "Service", "Install"}
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/bin/metrics-hub")
    assert check_command(argv[1:], f"{name} unit") == name
    (env_file,) = service["EnvironmentFile"]
    assert env_file == f"/etc/metrics-hub/{name}.env"
    settings = check_env(name, parse_env_file(DEPLOY / "systemd" / f"{name}.env"),
                         f"{name}.env")
    assert service["DynamicUser"] == ["yes"] or service.get("User")
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes",
                       "Restart": "on-failure", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "CapabilityBoundingSet": ""}.items():
        assert service.get(key) == [value], f"{name}: {key}={value} expected"
    own_stop = settings.shutdown_timeout if name == "collector" else settings.drain_timeout
    assert seconds(service["TimeoutStopSec"][0]) >= own_stop + 5


# -- Compose and HAProxy --------------------------------------------------------------------
def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose_command(service: Mapping[str, Any]) -> list[str] | None:
    """The metrics-hub argv of a service of our image, or None for other images."""
    if service.get("image") != "metrics-hub:latest":
        return None
    entry = service.get("entrypoint")
    command = list(service.get("command") or [])
    if entry == ["python", "-m", "hub.simulate"]:
        return ["hub.simulate", *command]
    assert entry is None, f"unexpected entrypoint {entry}"  # the image's: metrics-hub
    return command


def parse_haproxy(path: Path) -> dict[str, list[list[str]]]:
    """HAProxy sections ("backend gateways") -> their directive lines, split in words."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        else:
            assert current is not None, f"directive outside a section: {raw!r}"
            current.append(line.split())
    return sections


def test_compose_and_haproxy() -> None:
    """Compose: Redis, two gateways, HAProxy, a collector; each of our services runs a real
    command with its own variables; HAProxy checks /readyz on each gateway's real port,
    keeps WebSocket tunnels open, and listens where Compose publishes it."""
    (compose,) = load_yaml(DEPLOY / "compose" / "compose.yaml")
    services: dict[str, Any] = compose["services"]
    gateways: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for name, service in services.items():
        argv = compose_command(service)
        if argv is None:
            continue
        command = check_command(argv, f"compose service {name}")
        kinds[name] = command
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        settings = check_env(command, env, f"compose service {name}")
        if command == "gateway":
            gateways[name] = settings
            assert seconds(service["stop_grace_period"]) >= settings.drain_timeout
            check = " ".join(service["healthcheck"]["test"])
            assert f"127.0.0.1:{settings.port}/healthz" in check
    assert sorted(kinds.values()) == ["collector", "gateway", "gateway", "hub.simulate"]
    assert services["collector"]["pid"] == "host"
    assert services["redis"]["image"].startswith("redis:7")

    haproxy = services["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    config = parse_haproxy(DEPLOY / "compose" / "haproxy.cfg")
    (published,) = haproxy["ports"]
    frontend = config["frontend hub"]
    assert ["bind", f":{published.split(':')[-1]}"] in frontend
    backend = config["backend gateways"]
    assert ["option", "httpchk", "GET", "/readyz"] in backend
    assert ["http-check", "expect", "status", "200"] in backend
    assert any(line[:2] == ["timeout", "tunnel"] for line in config["defaults"])
    servers = {line[1]: line[2] for line in backend if line[0] == "server"}
    assert set(servers) == set(gateways)
    for name, address in servers.items():
        host, port = address.rsplit(":", 1)
        assert host == name
        assert int(port) == gateways[name].port
        assert "check" in next(line for line in backend if line[:2] == ["server", name])


# -- Kubernetes -------------------------------------------------------------------------------
def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in load_yaml(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name
            objects.append(doc)
    return objects


def container_env(container: Mapping[str, Any], objects: list[dict[str, Any]]
                  ) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps and Secrets, then env (a fieldRef
    gets a stand-in value of the right shape)."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name[("ConfigMap", source["configMapRef"]["name"])]["data"])
        else:
            env.update(by_name[("Secret", source["secretRef"]["name"])]["stringData"])
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else "pod-or-node-1"
    return env


def test_kubernetes_manifests() -> None:
    """The collector DaemonSet sees the host read-only; the gateway Deployment's probes,
    ports and grace period match the gateway; Service, PDB and HPA point at it."""
    objects = k8s_objects()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "DaemonSet", "Deployment", "HorizontalPodAutoscaler",
                     "Namespace", "PodDisruptionBudget", "Secret", "Service"]
    by_kind = {o["kind"]: o for o in objects}

    daemonset = by_kind["DaemonSet"]["spec"]["template"]["spec"]
    assert daemonset["hostPID"] is True
    assert daemonset["hostNetwork"] is True
    (collector,) = daemonset["containers"]
    assert check_command(collector["args"], "DaemonSet") == "collector"
    check_env("collector", container_env(collector, objects), "DaemonSet")
    assert all(mount["readOnly"] for mount in collector["volumeMounts"])
    assert collector["securityContext"]["readOnlyRootFilesystem"] is True
    assert daemonset["terminationGracePeriodSeconds"] >= \
        float(container_env(collector, objects)["METRICS_HUB_SHUTDOWN_TIMEOUT"])

    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert check_command(container["args"], "Deployment") == "gateway"
    settings = check_env("gateway", container_env(container, objects), "Deployment")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port}
    probes = {container[p]["httpGet"]["path"]: container[p]["httpGet"]["port"]
              for p in ("readinessProbe", "livenessProbe")}
    assert probes == {"/readyz": "http", "/healthz": "http"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + settings.drain_timeout

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = by_kind["Service"]["spec"]
    assert service["selector"] == labels
    assert service["ports"][0]["targetPort"] in ports
    assert by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    target = by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


def test_the_probe_paths_answer_on_a_real_gateway(redis_server: RedisServer) -> None:
    """A gateway started with the Deployment's settings answers 200 on every probe path and
    health check the deploy files use, on the port they name."""
    objects = k8s_objects()
    (container,) = next(o for o in objects if o["kind"] == "Deployment"
                        )["spec"]["template"]["spec"]["containers"]
    used = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    used |= set(re.findall(r"/(?:healthz|readyz)", (DEPLOY / "compose" / "compose.yaml")
                           .read_text() + (DEPLOY / "compose" / "haproxy.cfg").read_text()))
    assert used == PROBES
    port = free_port()
    proc = gateway(redis_server.url, port)
    try:
        wait_until(lambda: ready(port) or not proc.alive(), 60, "the gateway")
        for path in sorted(used):
            assert http_get(port, path)[0] == 200, path
    finally:
        proc.close()


# -- the image and the docs ---------------------------------------------------------------------
def test_dockerfile() -> None:
    """The image runs `metrics-hub` as the unprivileged user the manifests expect, and
    exposes the gateway's default port."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["metrics-hub"]' in text
    assert re.search(r"^USER 10001$", text, re.MULTILINE)
    assert f"EXPOSE {GATEWAY_SPEC.option('port').default}" in text
    for path in ("hub", "collectors", "gateway", "pyproject.toml"):
        assert (REPO / path).exists()
        assert path in text


def test_docs_name_only_real_commands_flags_and_variables() -> None:
    """Every `metrics-hub CMD --flag` and METRICS_HUB_* name in the deploy and operations
    docs exists."""
    every_env = set().union(*(env_names(spec) for spec in SPECS.values()))
    for path in DOCS:
        text = path.read_text()
        for name in re.findall(r"METRICS_HUB_[A-Z0-9_]+", text):
            assert name in every_env, f"{path.name}: no process reads {name}"
        for line in text.splitlines():
            for found in re.finditer(r"metrics-hub (collector|gateway|status|tail|demo)\b"
                                     r"([^`|\n]*)", line):
                argv = [found[1], *[a for a in shlex.split(found[2], comments=True)
                                    if a.startswith("--")]]
                check_command(argv, f"{path.name}: {line.strip()}")
            for found in re.finditer(r"python -m hub\.simulate([^`|\n]*)", line):
                check_command(["hub.simulate", *[a for a in found[1].split()
                                                 if a.startswith("--")]], path.name)


def test_config_parser_reads_the_units() -> None:
    """The units are also plain INI to a strict reader (no duplicate keys), as tools expect."""
    for path in (DEPLOY / "systemd").glob("*.service"):
        parser = configparser.ConfigParser(strict=True, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(path.read_text())
        assert parser.has_option("Service", "ExecStart")
