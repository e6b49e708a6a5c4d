"""`labctl doctor`'s judgement, from facts made here: what is OK, a warning, or an error, and the fix."""

from __future__ import annotations

from labctl.backends.base import EngineFacts
from labctl.doctor import Facts, judge, ready

ENGINE = EngineFacts(kind="Docker Engine", version="20.10.24", api_version="1.41", os="Debian GNU/Linux 12",
                     cgroup_version="1", storage_driver="fuse-overlayfs", data_root="/var/lib/docker", local=True)


def ready_machine(**changes) -> Facts:
    facts = Facts(engine=ENGINE, nofile_limit=20000, images_missing=[], engine_free=80 * 2**30,
                  temp_free=10 * 2**30, project="/course", lab_nofile={"server": 4096, "client": 8192},
                  connections_needed=[("polling", "idle-2000", 2000)])
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def by_name(facts: Facts) -> dict:
    return {finding.name: finding for finding in judge(facts)}


def test_a_ready_machine_is_all_ok():
    findings = judge(ready_machine())
    assert ready(findings) and {finding.level for finding in findings} == {"ok"}
    assert [finding.name for finding in findings] == ["labctl", "engine", "engine API", "cgroups", "storage",
                                                      "open files", "images", "disk"]


def test_no_engine_is_an_error_with_the_fix():
    findings = by_name(Facts(engine_error="cannot reach the Docker Engine at unix:///nope"))
    assert findings["engine"].level == "error" and "systemctl start docker" in findings["engine"].fix
    assert not ready(list(findings.values()))


def test_an_open_files_ceiling_below_an_exercises_needs_is_an_error():
    finding = by_name(ready_machine(nofile_limit=1024))["open files"]
    assert finding.level == "error"
    assert finding.detail == "the engine lets a container open 1024 files; polling's idle-2000 holds 2000 connections"
    assert "LimitNOFILE" in finding.fix


def test_a_ceiling_below_lab_yaml_but_enough_for_the_checks_is_a_warning():
    finding = by_name(ready_machine(nofile_limit=4096))["open files"]
    assert finding.level == "warning" and "client 8192" in finding.detail and "labctl uses 4096" in finding.detail


def test_missing_images_are_a_warning_when_they_can_be_built_and_an_error_when_not():
    can = by_name(ready_machine(images_missing=["base", "tools"], base_source="debootstrap",
                                base_detail="/usr/sbin/debootstrap"))["images"]
    assert can.level == "warning" and "labctl images build" in can.fix
    cannot = by_name(ready_machine(images_missing=["base"], base_source=None,
                                   base_detail="no registry answers, and debootstrap is not installed.\n"
                                               "Fix: install it (sudo apt-get install debootstrap)"))["images"]
    assert cannot.level == "error" and cannot.fix == "install it (sudo apt-get install debootstrap)"


def test_an_old_engine_api_and_a_full_disk_are_errors():
    old = by_name(ready_machine(engine=EngineFacts(**{**ENGINE.__dict__, "api_version": "1.39"})))["engine API"]
    assert old.level == "error" and "needs 1.41" in old.detail
    full = by_name(ready_machine(images_missing=["base"], base_source="debootstrap", engine_free=2**30))["disk"]
    assert full.level == "error" and "docker system prune" in full.fix
    tight = by_name(ready_machine(images_missing=["base"], base_source="debootstrap", temp_free=100 * 2**20))["disk"]
    assert tight.level == "error" and "TMPDIR" in tight.fix


def test_a_remote_engine_is_said_and_its_disk_not_measured():
    remote = by_name(ready_machine(engine=EngineFacts(**{**ENGINE.__dict__, "local": False}), engine_free=None))
    assert "remote" in remote["engine"].detail and "statistics" in remote["cgroups"].detail
    assert remote["disk"].level == "ok" and "another host" in remote["disk"].detail


def test_a_broken_lab_yaml_is_an_error():
    finding = by_name(ready_machine(project_error="lab.yaml:3: nodes: expected a mapping\nmore"))["lab.yaml"]
    assert finding.level == "error" and finding.detail == "lab.yaml:3: nodes: expected a mapping"


def test_the_local_backend_says_how_it_limits_and_which_checks_it_leaves_out():
    host = EngineFacts(kind="this host (no engine)", version="6.18", api_version="", os="Linux", cgroup_version="1",
                       storage_driver="files", data_root="/var/lib/labctl/local", local=True)
    everything = by_name(ready_machine(engine=host, backend="local", limits_by="rlimits", lacks=[]))
    assert list(everything) == ["labctl", "backend"] and "limits by rlimits" in everything["backend"].detail
    no_ptrace = judge(ready_machine(engine=host, backend="local", limits_by="rlimits",
                                    lacks=["raw_packets", "thread_waits"]))
    checks = next(finding for finding in no_ptrace if finding.name == "checks")
    assert ready(no_ptrace) and checks.level == "warning"
    assert "what each server thread waits in" in checks.detail and "CAP_SYS_PTRACE" in checks.fix
