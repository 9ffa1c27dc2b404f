"""Integration harness: run real playbooks against the real Docker engine.

Every test gets its own registry file; containers the test started carry
that path in their ``tao.inference.registry`` label, so the fixture can
both assert that nothing was left behind and clean up after a failure.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# The fleet test hosts (scripts/ensure-fleet.sh), one session fixture shared by the fleet tests.
from hosts.fixtures import fleet_hosts  # noqa: F401  pylint: disable=unused-import,import-error

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.dirname(sys.executable)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
IMAGE = os.environ.get("TAO_TEST_IMAGE", "tao-inference-emulator:latest")


def docker(*args, check=True):
    return subprocess.run(["docker"] + list(args), capture_output=True, text=True, check=check, timeout=120)


def _docker_ready():
    try:
        return docker("image", "inspect", IMAGE, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config, items):
    if _docker_ready():
        return
    skip = pytest.mark.skip(reason="no Docker engine or no %s image: run `make emulator-image`" % IMAGE)
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


class Run(object):
    def __init__(self, proc, records):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.records = records

    @property
    def output(self):
        return self.stdout + self.stderr

    def task(self, name, host=None):
        found = [r for r in self.records if r["task"] == name and (host is None or r["host"] == host)]
        assert found, "no result for task %r; tasks: %s\n%s" % (
            name, [r["task"] for r in self.records], self.output[-3000:])
        return found[-1]


class Harness(object):
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.registry = str(tmp_path / "registry.json")
        self.count = 0

    def env(self, extra=None):
        env = dict(os.environ)
        env.update({
            "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
            "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "record",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "PATH": BIN + os.pathsep + env.get("PATH", ""),
        })
        env.pop("HF_TOKEN", None)
        env.update(extra or {})
        return env

    def play(self, tasks, hosts="localhost", extra_vars=None, args=(), env=None, inventory=None,
             timeout=300):
        """Run a one-play playbook made of ``tasks`` (YAML text)."""
        self.count += 1
        play = textwrap.dedent("""\
            - hosts: {hosts}
              gather_facts: false
              module_defaults:
                group/tao.inference.service:
                  registry_path: {registry}
              tasks:
            """).format(hosts=hosts, registry=self.registry)
        play += textwrap.indent(textwrap.dedent(tasks), "    ")
        path = self.tmp / ("play%d.yml" % self.count)
        path.write_text(play)
        return self.playbook(str(path), extra_vars, args, env, inventory, timeout)

    def spawn(self, tasks, env=None, args=()):
        """Start a one-play playbook in the background (its own process group, as a terminal runs it);
        ``finish(proc)`` waits for it and returns the :class:`Run`."""
        self.count += 1
        path = self.tmp / ("play%d.yml" % self.count)
        path.write_text(textwrap.dedent("""\
            - hosts: localhost
              gather_facts: false
              module_defaults:
                group/tao.inference.service:
                  registry_path: {registry}
              tasks:
            """).format(registry=self.registry) + textwrap.indent(textwrap.dedent(tasks), "    "))
        record = self.tmp / ("record%d.jsonl" % self.count)
        cmd = [os.path.join(BIN, "ansible-playbook"), str(path), "-e", json.dumps({"registry_path": self.registry})]
        cmd += list(args)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=self.env(dict({"TAO_TEST_RECORD": str(record)}, **(env or {}))))
        proc.record = record
        return proc

    @staticmethod
    def finish(proc, timeout=300):
        out, err = proc.communicate(timeout=timeout)
        proc.stdout, proc.stderr = out, err
        records = [json.loads(line) for line in proc.record.read_text().splitlines()] if proc.record.exists() else []
        return Run(proc, records)

    def playbook(self, path, extra_vars=None, args=(), env=None, inventory=None, timeout=300):
        record = self.tmp / ("record%d.jsonl" % self.count)
        self.count += 1
        cmd = [os.path.join(BIN, "ansible-playbook"), path]
        if inventory:
            inv = self.tmp / "inventory.ini"
            inv.write_text(inventory.replace("PYTHON", sys.executable))
            cmd += ["-i", str(inv)]
        extra = {"tao_registry_path": self.registry}  # what the shipped playbooks read
        extra.update(extra_vars or {})
        cmd += ["-e", json.dumps(extra)] + list(args)
        run_env = self.env(dict({"TAO_TEST_RECORD": str(record)}, **(env or {})))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=timeout, cwd=ROOT,
                              stdin=subprocess.DEVNULL, check=False)
        records = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        return Run(proc, records)

    def registry_data(self):
        if not os.path.exists(self.registry):
            return {}
        with open(self.registry) as handle:
            return json.load(handle)

    def entries(self):
        return dict((k, v) for k, v in self.registry_data().items() if isinstance(v, dict))

    def containers(self, all_=True):
        out = docker("ps", "-q" + ("a" if all_ else ""), "--filter",
                     "label=tao.inference.registry=%s" % self.registry).stdout
        return out.split()


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    left = h.containers()
    if left:
        docker("rm", "-f", *left, check=False)


SERVICE = """\
- name: {title}
  tao.inference.tao_inference_service:
    network_arch: {arch}
    model_path: {model}
    image: {image}
    num_gpus: 0
{extra}
  register: svc
"""


def service_task(title="Start", arch="cosmos-rl", model="hf_model://nvidia/Cosmos-Reason1-7B", extra=""):
    return SERVICE.format(title=title, arch=arch, model=model, image=IMAGE,
                          extra=textwrap.indent(textwrap.dedent(extra), "    ") if extra else "")
