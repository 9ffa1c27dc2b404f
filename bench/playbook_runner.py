"""Run a playbook the way the benches time modules: through ansible-playbook, with the tests' record callback.

Each task's record carries ``task_started`` and ``finished`` (wall-clock seconds, time.time()) and its ``result``.
"""

import json
import os
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


def run_playbook(tmp, text, extra_vars=None, env=None, timeout=600, records=None):
    """Run playbook ``text`` in ``tmp``; return ({task name: record}, seconds of the whole run). ``records``, a
    list, receives every record (one per task and host).

    Exits with the playbook's output when it fails.
    """
    tag = uuid.uuid4().hex[:8]
    play, variables, record = (os.path.join(tmp, "%s-%s" % (tag, name))
                               for name in ("play.yml", "vars.json", "record.jsonl"))
    with open(play, "w") as handle:
        handle.write(text)
    with open(variables, "w") as handle:
        json.dump(extra_vars or {}, handle)
    run_env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, TAO_TEST_RECORD=record,
                   ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "tests", "integration", "callback_plugins"),
                   ANSIBLE_CALLBACKS_ENABLED="record", ANSIBLE_LOCALHOST_WARNING="0",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_NOCOLOR="1", **(env or {}))
    started = time.monotonic()
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), play, "-e", "@" + variables], env=run_env,
                          capture_output=True, text=True, timeout=timeout, check=False, cwd=tmp)
    whole = time.monotonic() - started
    if proc.returncode:
        raise SystemExit("ansible-playbook failed:\n" + proc.stdout[-3000:] + proc.stderr[-2000:])
    with open(record) as handle:
        rows = [json.loads(line) for line in handle]
    if records is not None:
        records.extend(rows)
    return dict((row["task"], row) for row in rows), whole
