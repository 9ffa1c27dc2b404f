"""What the collection claims about itself: every module in the action group and documenting it,
every module saying what the host that runs it needs, and the ansible-core range meta/runtime.yml
claims being the one scripts/matrix.sh tests. A new module that misses any of it fails here."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
GROUP = "tao.inference.service"


def _modules():
    folder = os.path.join(ROOT, "plugins", "modules")
    return sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".py") and not name.startswith("_"))


def _runtime():
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def docs():
    """The documentation ansible-doc renders (doc fragments applied) for every module."""
    import ansible_collections.tao.inference as collection  # pylint: disable=import-outside-toplevel

    here = list(collection.__path__)[0]  # <base>/ansible_collections/tao/inference, as tests/conftest.py made it
    base = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(here))))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=base,
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0")
    names = ["tao.inference." + name for name in _modules()]
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "module", "--json"] + names,
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict((name.split(".")[-1], value["doc"]) for name, value in json.loads(proc.stdout).items())


def test_every_module_is_in_the_action_group():
    group = _runtime()["action_groups"]["service"]
    assert sorted(group) == _modules(), (
        "meta/runtime.yml action_groups.service must list every module in plugins/modules, and only those")


@pytest.mark.parametrize("module", _modules())
def test_every_module_documents_its_action_group(docs, module):
    attribute = docs[module].get("attributes", {}).get("action_group")
    assert attribute, ("%s: add tao.inference.attributes.action_group to extends_documentation_fragment"
                       % module)
    assert attribute["membership"] == [GROUP] and attribute["support"] == "full"
    assert "group/%s" % GROUP in attribute["description"]


@pytest.mark.parametrize("module", _modules())
def test_every_module_says_what_its_host_needs(docs, module):
    requirements = docs[module].get("requirements") or []
    assert any("Python 3." in line for line in requirements), (
        "%s: its requirements must say which Python the host that runs it needs" % module)


def test_the_claimed_ansible_core_range_is_the_tested_one():
    with open(os.path.join(ROOT, "scripts", "matrix.sh")) as handle:
        script = handle.read()
    oldest = re.search(r'^OLDEST=(\S+)$', script, re.M).group(1)
    newest = re.search(r'^NEWEST=(\S+)$', script, re.M).group(1)
    major, minor = newest.split(".")
    assert _runtime()["requires_ansible"] == ">=%s.0,<%s.%d.0" % (oldest, major, int(minor) + 1)
    matrix = re.search(r'^MATRIX="([^"]*)"$', script, re.M).group(1).split()
    tested = [entry.split(":")[0] for entry in matrix] + ["2.19"]  # 2.19: the main .venv
    expected = ["2.%d" % n for n in range(int(oldest.split(".")[1]), int(minor) + 1)]
    assert sorted(tested, key=lambda v: int(v.split(".")[1])) == expected


def test_installing_the_requirements_never_changes_ansible_core():
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        lines = [line.split("#")[0].strip() for line in handle]
    assert not [line for line in lines if re.match(r"(?i)ansible(-core|-base)?\b", line)]


def test_a_first_release_has_nothing_to_break_fix_or_remove():
    """Until the first release is in changelogs/changelog.yaml, there is no earlier version a fragment
    could break, fix, deprecate or remove something of: say what the collection does instead."""
    with open(os.path.join(ROOT, "changelogs", "changelog.yaml")) as handle:
        if (yaml.safe_load(handle) or {}).get("releases"):
            pytest.skip("a release exists")
    folder = os.path.join(ROOT, "changelogs", "fragments")
    wrong = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as handle:
            sections = set(yaml.safe_load(handle) or {})
        found = sections & {"breaking_changes", "bugfixes", "security_fixes", "deprecated_features", "removed_features"}
        if found:
            wrong[name] = sorted(found)
    assert not wrong, ("no version was released yet: move these entries to minor_changes or major_changes, "
                       "written as what the collection does: %s" % wrong)
