"""The instance types the test platform offers, and the environment knobs that shape its behaviour."""

import os


class InstanceType:
    """One instance type as ``brev search`` would describe it."""

    def __init__(self, name, gpu, count, vram, capability, price, stoppable=True):
        self.name = name
        self.gpu = gpu
        self.count = count
        self.vram = vram
        self.capability = capability
        self.price = price
        self.stoppable = stoppable

    @property
    def kind(self):
        """``gpu`` or ``cpu``, as ``brev ls --json`` prints in ``instance_kind``."""
        return "gpu" if self.count else "cpu"

    @property
    def gpu_name(self):
        """The ``gpu`` column of ``brev ls`` (``-`` for a CPU type)."""
        return self.gpu if self.count else "-"


CATALOG = [
    InstanceType("n1-highmem-4:nvidia-tesla-t4:1", "T4", 1, 16, 7.5, 0.55),
    InstanceType("g6.xlarge", "L4", 1, 24, 8.9, 0.80),
    InstanceType("g5.xlarge", "A10G", 1, 24, 8.6, 1.01),
    InstanceType("g5.12xlarge", "A10G", 4, 24, 8.6, 5.67),
    InstanceType("a2-highgpu-1g:nvidia-tesla-a100:1", "A100", 1, 40, 8.0, 3.67),
    InstanceType("hyperstack_H100", "H100", 1, 80, 9.0, 2.40),
    InstanceType("p5.48xlarge", "H100", 8, 80, 9.0, 98.32),
    InstanceType("n2-standard-4", "", 0, 0, 0.0, 0.19),
]
BY_NAME = {item.name: item for item in CATALOG}

# Defaults of the real ``brev create`` when no type is given (pkg/cmd/gpucreate).
DEFAULT_MIN_TOTAL_VRAM = 20.0
DEFAULT_MIN_CAPABILITY = 8.0


def _env_list(name, default=""):
    value = os.environ.get(name, default)
    return {part.strip() for part in value.split(",") if part.strip()}


def _env_seconds(name, default):
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return max(number, 0.0)


class Settings:
    """The TAO_BREV_* environment of one CLI call (README.md lists every knob)."""

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        here = os.path.dirname(os.path.abspath(__file__))
        repo = os.path.dirname(os.path.dirname(os.path.dirname(here)))
        self.dir = os.path.abspath(env.get("TAO_BREV_DIR") or os.path.join(repo, ".build", "brev"))
        self.home = os.path.abspath(env.get("TAO_BREV_HOME") or os.path.join(self.dir, "home"))
        self.start_seconds = _env_seconds("TAO_BREV_START_SECONDS", 1.0)
        self.stop_seconds = _env_seconds("TAO_BREV_STOP_SECONDS", 1.0)
        self.delete_seconds = _env_seconds("TAO_BREV_DELETE_SECONDS", 1.0)
        self.poll_seconds = _env_seconds("TAO_BREV_POLL_SECONDS", 0.5)
        self.create_status = env.get("TAO_BREV_CREATE_STATUS") or "STARTING"
        if self.create_status not in ("STARTING", "DEPLOYING"):
            self.create_status = "STARTING"
        self.no_capacity = _env_list("TAO_BREV_NO_CAPACITY_TYPES", "p5.48xlarge")
        self.fail_types = _env_list("TAO_BREV_FAIL_TYPES")
        self.unstoppable = _env_list("TAO_BREV_UNSTOPPABLE_TYPES", "hyperstack_H100")
        self.unhealthy = _env_list("TAO_BREV_UNHEALTHY_NAMES")
        self.reject_prefix = env.get("TAO_BREV_REJECT_TOKEN_PREFIX", "invalid")
        self.subnet = (env.get("TAO_BREV_SUBNET") or "127.100.0").strip(".")
        try:
            self.ssh_port = int(env.get("TAO_BREV_SSH_PORT") or 22)
        except ValueError:
            self.ssh_port = 22
        self.sshd = env.get("TAO_BREV_SSHD") or "/usr/sbin/sshd"
        self.hosts = "netns" if env.get("TAO_BREV_HOSTS") == "netns" else "loopback"
        self.netns_net = (env.get("TAO_BREV_NETNS_NET") or "10.213").strip(".")
        self.images = _env_list("TAO_BREV_IMAGES", "tao-inference-emulator:latest")

    def path(self, *parts):
        """A path under the state folder."""
        return os.path.join(self.dir, *parts)
