# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which service: the registry entries a job_id or name selects, and the service a request goes to.

A request never falls back silently to ``latest`` when several services run: ``latest``
is used only when the user gives it as the job_id.
"""

import copy

from ansible_collections.tao.inference.plugins.module_utils import procs
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

LATEST = "latest"


def _by_start(entries, newest_first=False):
    return sorted(entries, key=lambda e: e.get("started_at") or "", reverse=newest_first)


def select(state, job_id=None, name=None):
    """The registry entries (copies) that ``job_id`` or ``name`` selects, newest first.

    ``job_id`` selects its one entry; ``latest`` means the most recently started service, and
    only when given as the job_id. A ``name`` may select several entries. With neither, every
    entry is selected. What is not there selects nothing (an empty list); an entry that is there
    but cannot be trusted raises (see :meth:`registry.RegistryState.get`).
    """
    if job_id:
        if job_id == LATEST:
            job_id = state.latest
            if job_id is None:
                return []
        entry = state.get(job_id)
        return [entry] if entry is not None else []
    if name:
        return state.find_name(name)
    return _by_start([copy.deepcopy(e) for e in state.entries().values()], newest_first=True)


def describe(entry):
    """The facts of an entry that identify it to the user (the candidates of an ambiguous request)."""
    return {
        "job_id": entry["job_id"],
        "name": entry.get("name"),
        "network_arch": entry.get("network_arch"),
        "host_url": entry.get("host_url"),
        "started_at": entry.get("started_at"),
    }


def _choice_text(candidates):
    return "; ".join(
        "%s (arch %s, url %s, started %s%s)" % (
            c["job_id"], c["network_arch"], c["host_url"], c["started_at"],
            ", name %s" % c["name"] if c.get("name") else "")
        for c in candidates
    )


def resolve_target(state, job_id=None, network_arch=None, name=None):
    """Pick the service for a request: an explicit job_id or name must exist; else the one
    service of ``network_arch``, else the one service (several -> the user must choose)."""
    return _ready_to_serve(_pick(state, job_id, network_arch, name))


def _ready_to_serve(entry):
    """A service whose start has not finished has no endpoint yet: say so instead of sending."""
    if entry.get("status") == "starting" or not entry.get("host_url"):
        if procs.owner_alive(entry.get("owner")):
            raise TaoInferenceError(
                "service %s (%s) is still starting (since %s); wait for its start to finish (tao_inference_service "
                "waits for readiness) and send the request again" % (
                    entry["job_id"], entry.get("network_arch"), entry.get("started_at")), job_id=entry["job_id"])
        raise TaoInferenceError(
            "service %s (%s) never finished starting: the run that started it was interrupted. Start it again "
            "(tao_inference_service with its name) or stop it with state=absent and job_id %s"
            % (entry["job_id"], entry.get("network_arch"), entry["job_id"]), job_id=entry["job_id"])
    return entry


def _pick(state, job_id, network_arch, name):
    if job_id:
        selected = select(state, job_id=job_id)
        if selected:
            return selected[0]
        if job_id == LATEST:
            raise TaoInferenceError("job_id 'latest' was given but the registry %s holds no service; "
                                    "start one first" % state.path)
        running = [describe(e) for e in state.entries().values()]
        raise TaoInferenceError(
            "no service with job_id %s in the registry %s; running: %s"
            % (job_id, state.path, _choice_text(running) or "none"), candidates=running)
    if name:
        selected = select(state, name=name)
        if not selected:
            raise TaoInferenceError("no service named %s in the registry %s" % (name, state.path))
        return selected[0]
    ordered = _by_start(select(state))  # oldest first
    if network_arch:
        matches = [e for e in ordered if e.get("network_arch") == network_arch]
        if not matches:
            others = [describe(e) for e in ordered]
            raise TaoInferenceError(
                "no %s service is running (registry %s); start one first. Running: %s"
                % (network_arch, state.path, _choice_text(others) or "none"), candidates=others)
        if len(matches) > 1:
            candidates = [describe(e) for e in matches]
            raise TaoInferenceError(
                "%d %s services are running; choose one with job_id: %s"
                % (len(matches), network_arch, _choice_text(candidates)), candidates=candidates)
        return matches[0]
    if not ordered:
        raise TaoInferenceError("no service is running (registry %s); start one first" % state.path)
    if len(ordered) > 1:
        candidates = [describe(e) for e in ordered]
        raise TaoInferenceError(
            "%d services are running and none was chosen; give job_id (or network_arch) for one of: %s"
            % (len(ordered), _choice_text(candidates)), candidates=candidates)
    return ordered[0]
