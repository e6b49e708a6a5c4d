"""The lab on the real engine: network, names, sandbox, isolation, limits, and nothing left behind."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from conftest import OWNER

from labctl.errors import ServerStartError
from labctl.lab import LABEL_LAB, LABEL_OWNER, Lab

FETCH = ("import sys, urllib.request; "
         "print(urllib.request.urlopen(f'http://{sys.argv[1]}:8080/', timeout=3).read().decode().strip())")
CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close(); print('connected')\n"
           "except OSError as error:\n"
           "    print('failed', type(error).__name__)\n")


def test_client_reaches_the_server_by_name_and_by_address(start_lab):
    lab = start_lab("hello")
    address = lab.address("server")
    assert address is not None
    by_name = lab.exec("client", ["python3", "-c", FETCH, "server"])
    by_address = lab.exec("client", ["python3", "-c", FETCH, address])
    assert (by_name.exit_code, by_name.text.strip()) == (0, "hello from the lab")
    assert (by_address.exit_code, by_address.text.strip()) == (0, "hello from the lab")
    # The injector sits on the same network; the observer has none at all.
    assert lab.exec("injector", ["python3", "-c", FETCH, "server"]).text.strip() == "hello from the lab"
    routes = lab.exec("observer", ["cat", "/proc/net/route"]).text.strip().splitlines()
    assert routes[1:] == [], "the observer must have no network interface but loopback"


def test_the_server_runs_sandboxed_with_the_limits_of_lab_yaml(start_lab, project):
    lab = start_lab("hello")
    limits = project.spec.server.limits
    host_config = project.backend.client.api.inspect_container(lab.container_name("server"))["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"] and not host_config["CapAdd"]
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["NanoCpus"] == int(limits.cpus * 1e9)
    assert host_config["Memory"] == limits.memory_bytes == host_config["MemorySwap"]
    assert host_config["PidsLimit"] == limits.pids
    assert not host_config["Privileged"] and not host_config["Binds"]

    # Read back from inside, as the server's own user sees it.
    script = ("id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ulimit -n; "
              "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
              "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max")
    lines = lab.exec("server", ["sh", "-c", script]).text.split("\n")
    assert lines[0] == "1000", "the submission must run as an unprivileged user"
    assert "CapEff:\t0000000000000000" in lines and "CapBnd:\t0000000000000000" in lines
    assert "NoNewPrivs:\t1" in lines
    assert int(lines[4]) == limits.nofile
    assert int(lines[5]) == limits.memory_bytes
    assert int(lines[6]) == limits.pids


def test_a_server_sysctl_of_lab_yaml_holds_in_the_servers_network_namespace_only(start_lab, project):
    server = project.spec.server.model_copy(update={"sysctls": {"net.ipv4.tcp_syncookies": 0}})
    spec = project.spec.model_copy(update={"nodes": {**project.spec.nodes, "server": server}})
    lab = start_lab("hello", spec=spec)
    host_config = project.backend.client.api.inspect_container(lab.container_name("server"))["HostConfig"]
    assert host_config["Sysctls"] == {"net.ipv4.tcp_syncookies": "0"}
    read = ["cat", "/proc/sys/net/ipv4/tcp_syncookies"]
    # /proc/sys/net shows the reader's own network namespace: the server's is set, the others keep the default.
    assert lab.exec("server", read).text.strip() == "0"
    assert lab.exec("client", read).text.strip() == "1"
    assert lab.exec("observer", read).text.strip() == "1", "the observer shares the PID namespace only"
    # The server still runs unprivileged and cannot change it back.
    assert lab.exec("server", ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_syncookies"]).exit_code != 0
    assert lab.exec("server", read).text.strip() == "0"


def test_only_the_observer_may_read_the_servers_syscalls(start_lab, project):
    lab = start_lab("hello")
    caps = {node: project.backend.client.api.inspect_container(lab.container_name(node))["HostConfig"]["CapAdd"]
            for node in ("client", "injector", "observer")}
    assert caps == {"client": ["NET_RAW", "NET_ADMIN", "SETGID"], "injector": ["NET_RAW", "NET_ADMIN"],
                    "observer": ["SYS_PTRACE", "DAC_READ_SEARCH"]}
    # The observer sees the server's processes (shared PID namespace) and what they wait in.
    found = lab.exec("observer", ["sh", "-c", "cat /proc/$(pgrep -u 1000 -x python3)/syscall"])
    assert found.text.split()[0] == "288", "an idle blocking server sleeps in accept4 (288 on x86_64)"
    # The client shares nothing with the server: it cannot see its processes.
    assert lab.exec("client", ["pgrep", "-x", "python3"]).exit_code == 1


def test_the_lab_network_has_no_way_out(start_lab, project, images):
    """An outside container (on Docker's default bridge, on this machine) is unreachable from the lab."""
    lab = start_lab("hello")
    network = project.backend.client.api.inspect_network(lab.network_name)
    assert network["Internal"] is True
    outside = project.backend.client.containers.run(
        images["tools"], ["python3", "-m", "http.server", "8080"], detach=True,
        labels={LABEL_LAB: f"{lab.id}-outside", LABEL_OWNER: OWNER})
    try:
        outside.reload()
        address = outside.attrs["NetworkSettings"]["IPAddress"]
        probe = project.backend.client.containers.run(
            images["tools"], ["sh", "-c", f"sleep 0.5; python3 -c \"{CONNECT}\" {address} 8080"], remove=True,
            labels={LABEL_OWNER: OWNER})
        assert probe.decode().strip() == "connected", "control: the outside server must be reachable from outside"
        from_lab = lab.exec("server", ["python3", "-c", CONNECT, address, "8080"]).text.strip()
        assert from_lab.startswith("failed"), f"the lab's server reached a container outside its network: {from_lab}"
    finally:
        outside.remove(force=True)


def test_two_labs_side_by_side_cannot_reach_each_other(start_lab):
    first, second = start_lab("hello"), start_lab("hello")
    assert first.network_name != second.network_name
    subnets = {c.address.rsplit(".", 1)[0] for c in first.containers() if c.address}
    other = {c.address.rsplit(".", 1)[0] for c in second.containers() if c.address}
    assert subnets and other and subnets.isdisjoint(other), "two labs must get different subnets"
    own = first.exec("client", ["python3", "-c", CONNECT, first.address("server"), "8080"]).text.strip()
    across = first.exec("client", ["python3", "-c", CONNECT, second.address("server"), "8080"]).text.strip()
    assert own == "connected"
    assert across.startswith("failed"), "a lab reached the server of another lab"


def test_down_removes_everything_and_can_be_repeated(start_lab, project):
    lab = start_lab("hello")
    assert len(project.backend.find_containers({LABEL_LAB: lab.id})) == 4
    assert lab.down() == 5  # four containers and the network
    assert project.backend.find_containers({LABEL_LAB: lab.id}) == []
    assert project.backend.find_networks({LABEL_LAB: lab.id}) == []
    assert lab.down() == 0


def test_a_server_that_exits_is_reported_with_its_exit_code_and_log(start_lab, project):
    with pytest.raises(ServerStartError) as failure:
        start_lab("crash")
    message = str(failure.value)
    assert "exited with code 3" in message
    assert "starting, then failing on purpose" in message
    assert project.backend.find_containers({LABEL_OWNER: OWNER, "labctl.role": "server"}) == [], \
        "a failed up must remove what it made"


def test_a_server_that_never_listens_times_out_clearly(start_lab, project):
    impatient = project.spec.model_copy(update={"timeouts": project.spec.timeouts.model_copy(update={"up": 2.0})})
    with pytest.raises(ServerStartError) as failure:
        start_lab("silent", spec=impatient)
    message = str(failure.value)
    assert "did not listen on port 8080 within 2 s" in message
    assert "I will never listen" in message
    assert project.backend.find_networks({LABEL_OWNER: OWNER}) == []


def test_exec_output_and_exit_codes_come_back(start_lab):
    lab = start_lab(None)  # a playground lab: the server node idles
    result = lab.exec("client", ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    slow = lab.exec("client", ["sleep", "30"], timeout=1)
    assert slow.timed_out


def test_labs_are_found_by_label(start_lab, project):
    from labctl.lab import list_labs

    lab = start_lab(None)
    summaries = {summary.id: summary for summary in list_labs(project.backend, OWNER)}
    assert lab.id in summaries
    summary = summaries[lab.id]
    assert summary.owner == OWNER and summary.subnet
    assert sorted(c.node for c in summary.containers) == ["client", "injector", "observer", "server"]
    assert all(c.status == "running" for c in summary.containers)
    created = datetime.fromisoformat(summary.created)
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 120


def test_a_nofile_limit_above_the_engines_is_clamped_and_said(start_lab, project, images):
    greedy = project.spec.nodes["client"].model_copy(
        update={"limits": project.spec.nodes["client"].limits.model_copy(update={"nofile": 1 << 30})})
    spec = project.spec.model_copy(update={"nodes": {**project.spec.nodes, "client": greedy}})
    said: list[str] = []
    lab = Lab.create(spec, project.backend)
    try:
        lab.up(images, progress=said.append)
        limit = project.backend.engine_nofile_limit()
        soft = lab.exec("client", ["sh", "-c", "ulimit -n"]).text.strip()
        assert int(soft) == limit < 1 << 30
        assert any(f"nofile {1 << 30} is above the engine's own limit {limit}" in line for line in said), said
    finally:
        lab.down()
