"""The warning for a registry that vanishes with an AWX job's container, against recorded mountinfo."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils import ephemeral

# A docker container (an execution environment run by ansible-runner under podman looks the same):
# the overlay root, a named volume on /data, a bind mount of a host folder with a space in its name,
# a tmpfs on /scratch, and ansible-runner's private data folder on /runner.
CONTAINER = """\
1200 1100 0:120 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/A,upperdir=/x/diff
1201 1200 0:121 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1202 1200 0:122 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1210 1200 254:0 /var/lib/docker/volumes/tao/_data /data rw,relatime - ext4 /dev/vda rw
1211 1200 254:0 /srv/tao\\040state /srv/tao\\040state rw,relatime - ext4 /dev/vda rw
1212 1200 0:130 / /scratch rw,nosuid,nodev - tmpfs tmpfs rw
1213 1200 254:0 /tmp/awx_42_abc /runner rw,relatime - ext4 /dev/vda rw
1214 1200 254:0 /etc/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw
"""

# A Kubernetes pod (AWX's container group): an emptyDir and a PersistentVolumeClaim.
POD = """\
2000 1900 0:200 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containerd/x
2001 2000 253:1 /var/lib/kubelet/pods/0f/volumes/kubernetes.io~empty-dir/work /work rw,relatime - xfs /dev/sda1 rw
2002 2000 0:300 / /state rw,relatime - nfs4 filer:/exports/tao rw
"""

# A machine (or VM) whose root is its own disk: even with a /.dockerenv left behind, nothing vanishes.
MACHINE = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
"""


def reason(path, mountinfo, environ=None, markers=("/.dockerenv",), cgroup=""):
    return ephemeral.ephemeral_reason(
        path, mountinfo=mountinfo, environ=environ or {}, exists=lambda p: p in markers,
        read=lambda p: cgroup if p == "/proc/self/cgroup" else None)


@pytest.mark.parametrize("path, where", [
    ("/root/.local/state/tao-inference/registry.json", "the container's own overlay root filesystem"),
    ("/scratch/registry.json", "a tmpfs at /scratch (memory)"),
    ("/runner/.local/state/tao-inference/registry.json", "ansible-runner's private data folder /runner"),
])
def test_a_path_that_vanishes_with_the_container_is_named_with_why(path, where):
    said = reason(path, CONTAINER)
    assert said.startswith("it is on " + where)
    assert said.endswith("and this runs in a container (/.dockerenv)")


@pytest.mark.parametrize("path", ["/data/registry.json", "/data/deeper/still/registry.json",
                                  "/srv/tao state/registry.json"])
def test_a_mounted_volume_is_persistent(path):
    assert reason(path, CONTAINER) is None


def test_a_folder_named_like_a_mount_point_is_not_under_it():
    # /database is on the root overlay, not on the /data volume.
    assert "overlay root" in reason("/database/registry.json", CONTAINER)


def test_kubernetes_empty_dir_vanishes_with_the_pod_and_a_claim_does_not():
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert "a Kubernetes emptyDir volume at /work" in reason("/work/registry.json", POD, env, markers=())
    assert reason("/state/registry.json", POD, env, markers=()) is None
    assert "overlay root" in reason("/home/runner/registry.json", POD, env, markers=())


def test_outside_a_container_nothing_is_said():
    assert reason("/root/registry.json", CONTAINER, markers=()) is None  # no sign of a container
    assert reason("/root/registry.json", MACHINE) is None  # a container sign, but the root is a disk
    assert reason("/dev/shm/registry.json", MACHINE, markers=()) is None


@pytest.mark.parametrize("environ, markers, cgroup, sign", [
    ({}, ("/run/.containerenv",), "", "/run/.containerenv"),
    ({"container": "podman"}, (), "", "container=podman"),
    ({}, (), "12:pids:/docker/4f1c\n", "/proc/self/cgroup"),
    ({}, (), "0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-1.scope\n", "/proc/self/cgroup"),
    ({"AWX_ISOLATED_DATA_DIR": "/runner/artifacts/42"}, (), "", "AWX_ISOLATED_DATA_DIR"),
])
def test_each_sign_of_a_container(environ, markers, cgroup, sign):
    said = reason("/opt/registry.json", CONTAINER, environ, markers, cgroup)
    assert said.endswith("(%s)" % sign)


def test_the_warning_says_what_to_do():
    warning = ephemeral.registry_warning(
        "/root/.local/state/tao-inference/registry.json", mountinfo=CONTAINER, environ={},
        exists=lambda p: p == "/.dockerenv", read=lambda p: None)
    assert warning.startswith("The service registry /root/.local/state/tao-inference/registry.json will vanish")
    assert "registry_path to a file on a persistent volume" in warning and "managed host" in warning
    assert ephemeral.registry_warning("/data/r.json", mountinfo=CONTAINER, environ={},
                                      exists=lambda p: True, read=lambda p: None) is None


def test_mountinfo_parsing_survives_odd_lines():
    mounts = ephemeral.parse_mountinfo("garbage\n\n1 2 3\n" + CONTAINER + "9 9 0:1 / /odd\\134dir rw - ext4 x rw\n")
    assert ("/srv/tao state", "/srv/tao state", "ext4", "/dev/vda") in mounts
    assert mounts[-1][0] == "/odd\\dir"
    assert ephemeral.mount_of("/nowhere", []) is None


def test_unreadable_mountinfo_says_nothing():
    assert reason("/root/registry.json", None) is None


def test_a_symlink_is_judged_by_where_it_leads(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert ephemeral.resolved(str(tmp_path / "link" / "not" / "yet" / "registry.json")) == \
        str(real / "not" / "yet" / "registry.json")
