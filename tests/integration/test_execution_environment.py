"""The execution environment definition, checked offline with ansible-builder (no image is built).

`ansible-builder introspect` must find the collection's Python and system requirements through its
meta/execution-environment.yml, exactly as it does inside an image build for every installed
collection, and `ansible-builder create` must write a build context whose Containerfile installs them.
"""

import os
import subprocess

import pytest
import yaml

from .conftest import BIN, ROOT

BUILDER = os.path.join(BIN, "ansible-builder")
DEFINITION = os.path.join(ROOT, "meta", "execution-environment.yml")


def requirement_lines(path):
    with open(path) as handle:
        return [line.split("#", 1)[0].strip() for line in handle
                if line.strip() and not line.lstrip().startswith("#")]


def builder(*args):
    assert os.path.exists(BUILDER), "ansible-builder is missing: pip install -r requirements-dev.txt"
    proc = subprocess.run([BUILDER] + list(args), capture_output=True, text=True, cwd=ROOT, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def collections(tmp_path):
    """A collections path holding only this collection, as an image build installs it."""
    namespace = tmp_path / "ansible_collections" / "tao"
    namespace.mkdir(parents=True)
    (namespace / "inference").symlink_to(ROOT)
    return tmp_path


def strip_origin(lines):
    return [line.split("  # from collection", 1)[0] for line in lines]


def test_introspect_finds_the_collections_python_and_system_requirements(collections):
    found = yaml.safe_load(builder("introspect", str(collections)))
    python, system = strip_origin(found["python"]), strip_origin(found["system"])
    wanted = requirement_lines(os.path.join(ROOT, "requirements.txt"))
    assert wanted and python == wanted  # httpx, kubernetes...
    assert all(line.endswith("  # from collection tao.inference") for line in found["python"] + found["system"])
    assert "openssh-clients [platform:rpm]" in system and "openssh-client [platform:dpkg]" in system
    assert system == requirement_lines(os.path.join(ROOT, "bindep.txt"))


def test_create_writes_a_build_context_that_installs_them(collections, tmp_path):
    context = tmp_path / "context"
    builder("create", "-f", DEFINITION, "--context", str(context), "--output-filename", "Containerfile")
    containerfile = (context / "Containerfile").read_text()
    assert "ARG EE_BASE_IMAGE=\"quay.io/centos/centos:stream9\"" in containerfile
    assert "ansible-core>=2.17,<2.22" in containerfile and "ansible-runner" in containerfile
    assert "COPY _build/requirements.txt requirements.txt" in containerfile
    assert "COPY _build/bindep.txt bindep.txt" in containerfile
    assert "introspect.py introspect" in containerfile and "install-from-bindep" in containerfile
    build = context / "_build"
    root_python = requirement_lines(os.path.join(ROOT, "requirements.txt"))
    assert requirement_lines(str(build / "requirements.txt")) == root_python
    assert requirement_lines(str(build / "bindep.txt")) == requirement_lines(os.path.join(ROOT, "bindep.txt"))
    # The build's own introspect step, run here on the context it would copy in: what the image gets.
    merged = subprocess.run([os.path.join(BIN, "python"), str(build / "scripts" / "introspect.py"), "introspect",
                             "--user-pip", str(build / "requirements.txt"), "--user-bindep", str(build / "bindep.txt"),
                             str(collections)], capture_output=True, text=True, timeout=60, check=False)
    assert merged.returncode == 0, merged.stderr
    got = yaml.safe_load(merged.stdout)
    assert any(line.startswith("httpx>=0.27,<1") for line in got["python"])
    assert any(line.startswith("openssh-clients [platform:rpm]") for line in got["system"])


@pytest.mark.parametrize("name", ["requirements.txt", "bindep.txt"])
def test_the_copies_beside_the_definition_match_the_collections_files(name):
    # ansible-builder reads the definition's paths from meta/, introspect from the collection's root.
    with open(os.path.join(ROOT, name)) as root, open(os.path.join(ROOT, "meta", name)) as meta:
        assert meta.read() == root.read(), "meta/%s differs from %s: cp %s meta/%s" % (name, name, name, name)
