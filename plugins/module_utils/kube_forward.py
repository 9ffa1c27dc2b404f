# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A local port forwarded to a pod through the Kubernetes API, as a process of its own.

For clusters without a load balancer: ``127.0.0.1:<local port>`` on this machine
reaches ``<pod>:<port>``, each TCP connection over one API port-forward stream
(the WebSocket ``portforward`` subresource, as ``kubectl port-forward`` uses).

The forward outlives the module run that started it, so it is a process: the
Python that runs the module, started in a new session, given this file's source
and its settings on stdin (a kubeconfig dict may hold a token: never argv, never
the environment). Its command line ends in ``tao-inference-forward <spec>``, with
``<spec>`` ``127.0.0.1:<local port>:<namespace>/<pod>:<port>``; like an SSH tunnel
it is known by pid and start time and stopped by exactly that pid.

This file is stdlib plus the ``kubernetes`` client only: it runs outside the
module's payload.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MARKER = "tao-inference-forward"
# The child reads one JSON document on stdin: {"source": <this file>, "settings": {...}}.
_BOOT = ("import json, sys\n"
         "document = json.loads(sys.stdin.read())\n"
         "sys.stdin.close()\n"
         "scope = {'__name__': 'tao_inference_forward'}\n"
         "exec(compile(document['source'], 'tao-inference-forward', 'exec'), scope)\n"
         "scope['serve'](document['settings'])\n")
_CHUNK = 256 * 1024
MAX_CONNECTIONS = 32  # forwarded at once; each is one API port-forward stream


def forward_spec(local_port, namespace, pod, port):
    return "127.0.0.1:%d:%s/%s:%d" % (local_port, namespace, pod, port)


def _argv(pid):
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as handle:
            return handle.read().split(b"\0")[:-1]
    except (OSError, ValueError):
        return []


def _started(pid):
    """``(state, start time)`` of ``pid`` from /proc/<pid>/stat, or (None, None)."""
    try:
        with open("/proc/%d/stat" % int(pid)) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, ValueError, IndexError):
        return None, None


def _is_forward(argv):
    return len(argv) == 5 and argv[1] == b"-c" and argv[3] == MARKER.encode()


def alive(pid, start_time, spec):
    """True when ``pid`` is still this forward: started at ``start_time``, run by this user, its command line
    exactly ``<python> -c <boot> tao-inference-forward <spec>`` (a reused pid or any other process is not)."""
    state, started = _started(pid)
    if state is None or state in ("Z", "X") or str(started) != str(start_time):
        return False
    try:
        if os.stat("/proc/%d" % int(pid)).st_uid != os.geteuid():
            return False
    except OSError:
        return False
    argv = _argv(pid)
    return _is_forward(argv) and argv[4] == spec.encode("utf-8")


def find(namespace, pod_prefix):
    """``(pid, start time, spec)`` of this user's forwards to pods of ``namespace`` whose names start with
    ``pod_prefix`` (a service whose registry entry was lost)."""
    marker = (":%s/%s" % (namespace, pod_prefix)).encode("utf-8")
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        argv = _argv(name)
        if _is_forward(argv) and marker in argv[4]:
            _state, started = _started(name)
            spec = argv[4].decode("utf-8", "replace")
            if started is not None and alive(int(name), started, spec):
                found.append((int(name), started, spec))
    return found


def _source():
    loader = globals().get("__loader__")
    source = loader.get_source(__name__) if loader is not None else None
    if not source:
        with open(__file__) as handle:
            source = handle.read()
    return source


def spawn(settings, environ):
    """Start the forward process; ``(Popen, stderr file)``. ``settings``: kubeconfig (path, dict or
    None for the defaults), context, validate_certs, namespace, pod, port, local_port."""
    spec = forward_spec(settings["local_port"], settings["namespace"], settings["pod"], settings["port"])
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", _BOOT, MARKER, spec], stdin=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                            stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True, close_fds=True,
                            env=environ, cwd="/")
    try:
        proc.stdin.write(json.dumps({"source": _source(), "settings": settings}).encode("utf-8"))
        proc.stdin.close()
    except OSError:
        pass  # it died at once: the caller reads why from its stderr
    return proc, errors


# -- what runs in the forward process ----------------------------------------------
def _api(settings):
    from kubernetes import client, config  # pylint: disable=import-outside-toplevel

    configuration = client.Configuration()
    kubeconfig = settings.get("kubeconfig")
    if isinstance(kubeconfig, dict):
        config.load_kube_config_from_dict(kubeconfig, context=settings.get("context"),
                                          client_configuration=configuration)
    elif kubeconfig or not settings.get("in_cluster"):
        config.load_kube_config(config_file=kubeconfig, context=settings.get("context"),
                                client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    if settings.get("validate_certs") is not None:
        configuration.verify_ssl = bool(settings["validate_certs"])
    return client.CoreV1Api(client.ApiClient(configuration))


def _pump(conn, remote):
    """Copy bytes both ways until either side closes."""
    peers = {conn: remote, remote: conn}
    try:
        while True:
            readable, _w, _x = select.select(list(peers), [], [], 300)
            if not readable:
                return  # idle for five minutes
            for sock in readable:
                data = sock.recv(_CHUNK)
                if not data:
                    return
                peers[sock].sendall(data)
    except OSError:
        return
    finally:
        for sock in (conn, remote):
            try:
                sock.close()
            except OSError:
                pass


def _connect(api, settings):
    from kubernetes.stream import portforward  # pylint: disable=import-outside-toplevel

    port = int(settings["port"])
    stream = portforward(api.connect_get_namespaced_pod_portforward, settings["pod"], settings["namespace"],
                         ports=str(port))
    remote = stream.socket(port)
    remote.setblocking(True)
    return remote


def serve(settings):
    """Listen on 127.0.0.1:<local_port> and forward every connection to the pod, until stopped.

    SIGTERM ends it cleanly (the client's temporary certificate and key files are removed). At most
    :data:`MAX_CONNECTIONS` connections are forwarded at once; more wait. When the cluster refuses the
    credentials (401, 403: an expired token), it exits, so that the forward shows as down and the next
    start with the service's name starts it again."""
    def stopped(_signum, _frame):
        raise SystemExit(0)  # a process of its own, not a module: interpreter exit runs the client's clean-up

    signal.signal(signal.SIGTERM, stopped)
    api = _api(settings)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(settings["local_port"])))
    listener.listen(64)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 2)  # the starter has read what a failed start printed; nothing more is read
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def forward(conn, remote):
        try:
            _pump(conn, remote)
        finally:
            slots.release()

    while True:
        conn, _addr = listener.accept()
        slots.acquire()
        try:
            remote = _connect(api, settings)
        except Exception as exc:  # pylint: disable=broad-except
            conn.close()  # the pod is gone or not reachable: this connection fails, the forward stays
            slots.release()
            said = "%s %s" % (getattr(exc, "reason", ""), exc)
            if getattr(exc, "status", None) in (401, 403) or "status 401" in said or "status 403" in said:
                raise SystemExit(3)
            continue
        threading.Thread(target=forward, args=(conn, remote), daemon=True).start()


def wait_listening(proc, errors, listens, local_port, timeout):
    """Wait until ``proc`` listens on ``local_port``; its stderr text when it exited first, else None.
    Raises TimeoutError when neither happened in ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            errors.seek(0)
            return errors.read().decode("utf-8", "replace").strip() or "exit %d" % proc.returncode
        if listens(proc.pid, local_port):
            return None
        time.sleep(0.05)
    raise TimeoutError("not listening after %ss" % timeout)
