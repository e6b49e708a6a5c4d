"""Benchmark: how fast `labctl up` / `down` are beside the floor and beside docker-compose.

    python3 tests/bench/bench_lab.py [-n 5]

Three ways to bring up the same four containers (server, client, injector, observer
sidecar) on a fresh internal network, each N times, and back down:
- labctl: Lab.up / Lab.down of the default lab (lab.yaml), without a submission (the
  server node idles, so no listen wait is counted);
- floor: the same containers created straight with the Docker SDK, in parallel, with
  the same options: the least any tool on the SDK could spend;
- compose: `docker-compose up -d` / `down` of an equivalent compose file, where
  docker-compose is installed.
Prints the median of each and the ratios, all measured in this one run. Target: labctl
up within 1.3x of the floor, and ahead of compose.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LABCTL_OWNER", f"bench-{os.getpid()}")

import docker  # noqa: E402
from docker.types import EndpointConfig, IPAMConfig, IPAMPool, Ulimit  # noqa: E402

from labctl.lab import Lab  # noqa: E402
from labctl.project import Project  # noqa: E402

LABELS = {"labctl.owner": os.environ["LABCTL_OWNER"], "labctl.lab": "bench"}


def time_labctl(project: Project, images: dict[str, str]) -> tuple[float, float]:
    lab = Lab.create(project.spec, project.backend)
    started = time.perf_counter()
    lab.up(images)
    up = time.perf_counter() - started
    started = time.perf_counter()
    lab.down()
    return up, time.perf_counter() - started


def time_floor(project: Project, images: dict[str, str], subnet: str) -> tuple[float, float]:
    """The same containers and options as labctl's, created directly with the SDK, in parallel."""
    client: docker.DockerClient = project.backend.client  # type: ignore[attr-defined]
    spec = project.spec
    name = f"floor-{secrets.token_hex(3)}"
    started = time.perf_counter()
    network = client.networks.create(name, driver="bridge", internal=True, labels=LABELS,
                                     ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]))

    def options(node) -> dict:
        kwargs = dict(image=images[node.image], command=["sleep", "infinity"], name=f"{name}-{node.name}",
                      hostname=node.name, labels=LABELS, detach=True, init=True, cap_drop=["ALL"],
                      cap_add=node.capabilities, security_opt=["no-new-privileges"],
                      nano_cpus=int(node.limits.cpus * 1e9), mem_limit=node.limits.memory_bytes,
                      memswap_limit=node.limits.memory_bytes, pids_limit=node.limits.pids, user=node.user or "",
                      ulimits=[Ulimit(name="nofile", soft=node.limits.nofile, hard=node.limits.nofile)])
        if node.role == "observer":
            kwargs.update(pid_mode=f"container:{name}-{node.watches}", network_mode="none")
        else:
            kwargs.update(network=name, networking_config={name: EndpointConfig(version=client.api._version,
                                                                                aliases=[node.name])})
        return kwargs

    # The best order the engine allows, the same as labctl's: create all at once, start them
    # while the observer (which needs the server to exist) is created, then start it.
    first = [node for node in spec.nodes.values() if node.role != "observer"]
    observers = spec.nodes_by_role("observer")
    with ThreadPoolExecutor(len(first) + len(observers)) as pool:
        containers = list(pool.map(lambda node: client.containers.create(**options(node)), first))
        sidecars = [pool.submit(lambda node=node: client.containers.create(**options(node))) for node in observers]
        list(pool.map(lambda container: container.start(), containers))
        for made in sidecars:
            sidecar = made.result()
            sidecar.start()
            containers.append(sidecar)
    up = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(len(containers)) as pool:
        list(pool.map(lambda container: container.remove(force=True), containers))
    network.remove()
    return up, time.perf_counter() - started


COMPOSE = """\
version: "2.4"
services:
{services}
networks:
  lab:
    internal: true
    ipam:
      config: [{{subnet: "{subnet}"}}]
"""


def compose_file(project: Project, images: dict[str, str], subnet: str) -> str:
    services = []
    for node in project.spec.nodes.values():
        lines = [f"  {node.name}:", f"    image: {images[node.image]}", "    command: [sleep, infinity]",
                 "    init: true", "    cap_drop: [ALL]", f"    cap_add: [{', '.join(node.capabilities)}]",
                 "    security_opt: [no-new-privileges]", f"    cpus: {node.limits.cpus}",
                 f"    mem_limit: {node.limits.memory_bytes}", f"    memswap_limit: {node.limits.memory_bytes}",
                 f"    pids_limit: {node.limits.pids}",
                 f"    ulimits: {{nofile: {{soft: {node.limits.nofile}, hard: {node.limits.nofile}}}}}",
                 f"    labels: {{labctl.owner: \"{LABELS['labctl.owner']}\"}}"]
        if node.user:
            lines.append(f'    user: "{node.user}"')
        if node.role == "observer":
            lines += [f'    pid: "service:{node.watches}"', "    network_mode: none"]
        else:
            lines += ["    networks: [lab]"]
        services.append("\n".join(lines))
    return COMPOSE.format(services="\n".join(services), subnet=subnet)


def time_compose(compose: str, folder: Path) -> tuple[float, float]:
    name = f"bench{secrets.token_hex(3)}"
    command = ["docker-compose", "-p", name, "-f", str(folder / "docker-compose.yml")]
    started = time.perf_counter()
    subprocess.run([*command, "up", "-d"], check=True, capture_output=True)
    up = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*command, "down"], check=True, capture_output=True)
    return up, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5, help="rounds of each (default 5)")
    args = parser.parse_args()
    project = Project(ROOT)
    images = project.ensure_images(lambda message: print("images:", message))
    free_subnet = "10.213.250.0/24"  # the top of lab.yaml's pool, unused by the few labs of a bench run
    timings: dict[str, list[tuple[float, float]]] = {"labctl": [], "floor": [], "compose": []}
    compose_dir = Path(tempfile.mkdtemp(prefix="labctl-bench-"))
    has_compose = shutil.which("docker-compose") is not None
    if has_compose:
        (compose_dir / "docker-compose.yml").write_text(compose_file(project, images, free_subnet))
    try:
        # Interleave the three so that a slow moment of the machine hits all of them alike.
        for round_ in range(args.n):
            timings["labctl"].append(time_labctl(project, images))
            timings["floor"].append(time_floor(project, images, free_subnet))
            if has_compose:
                timings["compose"].append(time_compose("", compose_dir))
            print(f"round {round_ + 1}/{args.n}: " + "  ".join(
                f"{name} up {runs[-1][0]:.2f}s down {runs[-1][1]:.2f}s" for name, runs in timings.items() if runs))
    finally:
        project.backend.remove({"labctl.owner": LABELS["labctl.owner"]})
        shutil.rmtree(compose_dir, ignore_errors=True)

    def median(name: str, which: int) -> float:
        return statistics.median(run[which] for run in timings[name])

    print(f"\nmedian of {args.n} rounds (seconds)     up      down")
    for name, runs in timings.items():
        if runs:
            print(f"  {name:34} {median(name, 0):6.2f}  {median(name, 1):6.2f}")
    print(f"  labctl / floor   {median('labctl', 0) / median('floor', 0):5.2f}x up   "
          f"{median('labctl', 1) / median('floor', 1):5.2f}x down   (target: up <= 1.30x)")
    if timings["compose"]:
        print(f"  labctl / compose {median('labctl', 0) / median('compose', 0):5.2f}x up   "
              f"{median('labctl', 1) / median('compose', 1):5.2f}x down   (target: < 1.00x)")
    else:
        print("  compose: docker-compose is not installed; skipped")


if __name__ == "__main__":
    main()
