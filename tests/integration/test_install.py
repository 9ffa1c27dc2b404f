"""The collection as a user gets it: built, installed with ansible-galaxy into an empty collections
path, and its demo playbook run from there, away from this checkout (scripts/matrix.sh runs this on
the oldest and the newest ansible-core the collection supports, `make test` on the main one)."""

import json
import os
import subprocess
import tarfile

import pytest
import yaml

from .conftest import BIN, ROOT, docker

# What a built collection must never carry: outputs of tests, builds, virtualenvs, caches, benchmarks.
JUNK = (".build", ".venv", ".git", ".ci", ".hypothesis", ".pytest_cache", ".ansible", "bench", "tests/output")


def _version():
    with open(os.path.join(ROOT, "galaxy.yml")) as handle:
        return yaml.safe_load(handle)["version"]


def _galaxy(*args, cwd, env):
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy")] + list(args), capture_output=True, text=True,
                          cwd=cwd, env=env, stdin=subprocess.DEVNULL, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _clean_env(tmp_path, collections):
    """An environment that knows no collection but the one in ``collections``."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "TAO_")))
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "0",
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # The default per-user registry ($XDG_STATE_HOME/tao-inference/registry.json), kept in this test.
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
    })
    return env


@pytest.fixture
def tarball(tmp_path):
    """Build the collection from the checkout, as `ansible-galaxy collection build` does.

    A file planted in tests/output (ansible-test's results, git-ignored) proves that build_ignore
    keeps it out even when it is there."""
    probe_dir = os.path.join(ROOT, "tests", "output")
    made = not os.path.isdir(probe_dir)
    os.makedirs(probe_dir, exist_ok=True)
    probe = os.path.join(probe_dir, "tao-install-test-%d.txt" % os.getpid())
    with open(probe, "w") as handle:
        handle.write("must not be in the tarball\n")
    try:
        out = tmp_path / "dist"
        _galaxy("collection", "build", "--output-path", str(out), ROOT, cwd=str(tmp_path),
                env=_clean_env(tmp_path, tmp_path / "none"))
    finally:
        os.unlink(probe)
        if made:
            try:
                os.rmdir(probe_dir)
            except OSError:  # another run put something there meanwhile
                pass
    path = out / ("tao-inference-%s.tar.gz" % _version())
    assert path.is_file(), os.listdir(str(out))
    return path


def test_the_built_collection_carries_the_collection_and_no_junk(tarball):
    with tarfile.open(str(tarball)) as archive:
        names = archive.getnames()
    junk = [n for n in names for j in JUNK if n == j or n.startswith(j + "/")]
    junk += [n for n in names if "__pycache__" in n.split("/") or n.endswith((".pyc", ".tar.gz"))]
    assert not junk, "build_ignore in galaxy.yml must keep these out: %s" % sorted(junk)[:20]
    for needed in ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "README.md", "requirements.txt",
                   "playbooks/demo.yml", "playbooks/files/demo.png", "plugins/modules/tao_inference_service.py",
                   "plugins/doc_fragments/attributes.py", "roles/inference_service/tasks/main.yml"):
        assert needed in names, needed


def test_installed_from_the_tarball_the_demo_runs_outside_the_checkout(tmp_path, tarball):
    collections = tmp_path / "collections"
    collections.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env(tmp_path, collections)
    _galaxy("collection", "install", "-p", str(collections), str(tarball), cwd=str(work), env=env)
    installed = collections / "ansible_collections" / "tao" / "inference"
    with open(str(installed / "MANIFEST.json")) as handle:
        assert json.load(handle)["collection_info"]["version"] == _version()
    assert not os.path.islink(str(installed)) and ROOT not in os.path.realpath(str(installed))

    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "tao.inference.demo"], capture_output=True,
                          text=True, cwd=str(work), env=env, stdin=subprocess.DEVNULL, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    registry = tmp_path / "state" / "tao-inference" / "registry.json"
    try:
        assert proc.returncode == 0, out
        assert "Inference service started." in proc.stdout
        assert "Answer: [tao-inference reference microservice] cosmos-rl answered 'What is in this image?'" \
            in proc.stdout
        # meta/runtime.yml's requires_ansible admits the ansible-core running it.
        assert "does not support Ansible version" not in out, out
    finally:
        label = "label=tao.inference.registry=%s" % registry
        left = docker("ps", "-aq", "--filter", label, check=False).stdout.split()
        if left:
            docker("rm", "-f", *left, check=False)
    assert not left, "the demo left containers behind: %s" % left
    with open(str(registry)) as handle:
        assert not [v for v in json.load(handle).values() if isinstance(v, dict)], "the demo left a registry entry"


def test_installed_from_git_with_a_requirements_file(tmp_path):
    """`ansible-galaxy collection install -r requirements.yml` with a git source, as the README shows
    (here the checkout's own committed HEAD, through git+file://)."""
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    collections = tmp_path / "collections"
    collections.mkdir()
    requirements = tmp_path / "requirements.yml"
    requirements.write_text(yaml.safe_dump({"collections": [
        {"name": "git+file://" + ROOT, "type": "git", "version": "HEAD"}]}))
    env = _clean_env(tmp_path, collections)
    _galaxy("collection", "install", "-r", str(requirements), "-p", str(collections), cwd=str(tmp_path), env=env)
    listed = _galaxy("collection", "list", "tao.inference", "--format", "json", cwd=str(tmp_path), env=env)
    found = [info for path in json.loads(listed).values() for name, info in path.items() if name == "tao.inference"]
    assert found == [{"version": _version()}]
    doc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "module", "--json",
                          "tao.inference.tao_inference_service"], capture_output=True, text=True,
                         cwd=str(tmp_path), env=env, timeout=120, check=False)
    assert doc.returncode == 0, doc.stderr
    attributes = json.loads(doc.stdout)["tao.inference.tao_inference_service"]["doc"]["attributes"]
    assert attributes["action_group"]["membership"] == ["tao.inference.service"]
