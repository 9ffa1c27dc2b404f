"""A registry that would vanish with an AWX job's container is warned about, from inside a real container.

The module runs through ansible-playbook inside a container of the local Docker engine (the reference
image has Python), as it runs inside an execution environment: a registry on the container's own
root filesystem or on a tmpfs draws a warning naming the path and what to do; one on a mounted volume
does not; the task still succeeds either way.
"""

import os
import uuid

import pytest

from .conftest import HERE, IMAGE, docker

PLAY = """\
- hosts: ee
  gather_facts: false
  tasks:
    - name: The default registry, on the container's own root filesystem
      tao.inference.tao_inference_info: {}
      register: on_root

    - name: A registry on a mounted volume
      tao.inference.tao_inference_info:
        registry_path: /data/state/registry.json

    - name: A registry on a tmpfs
      tao.inference.tao_inference_info:
        registry_path: /scratch/registry.json

    - name: A registry reached through a symlink into the volume
      tao.inference.tao_inference_info:
        registry_path: /home/linked/registry.json
"""

WARNING = "The service registry %s will vanish with this container: it is on %s"


@pytest.fixture
def container(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    name = "tao-ee-%s" % uuid.uuid4().hex[:12]
    docker("run", "-d", "--init", "--name", name, "--label", "tao.inference.test=ephemeral",
           "-e", "HOME=/root", "-v", "%s:/data" % volume, "--tmpfs", "/scratch", IMAGE, "sleep", "600")
    try:
        docker("exec", name, "/bin/sh", "-c", "mkdir -p /home /data/state && ln -s /data/state /home/linked")
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def test_a_registry_that_vanishes_with_the_container_is_warned_about(harness, container):
    play = harness.tmp / "ee.yml"
    play.write_text(PLAY)
    run = harness.playbook(str(play), inventory="ee ansible_host=%s ansible_connection=docker_exec "
                           "ansible_python_interpreter=/usr/bin/python3\n" % container,
                           env={"ANSIBLE_CONNECTION_PLUGINS": os.path.join(HERE, "connection_plugins")})
    assert run.rc == 0, run.output  # a warning, never a failure
    out = " ".join(run.output.split())  # the warning is folded over several lines
    assert WARNING % ("/root/.local/state/tao-inference/registry.json",
                      "the container's own overlay root filesystem") in out
    assert WARNING % ("/scratch/registry.json", "a tmpfs at /scratch (memory)") in out
    assert "Set registry_path to a file on a persistent volume mounted into the execution environment" in out
    assert "/data/state/registry.json" not in out and "/home/linked" not in out
    assert run.task("The default registry, on the container's own root filesystem")["result"]["services"] == []
