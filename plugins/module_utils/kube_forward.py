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


def forward_spec(local_port, namespace, pod, port):
    return "127.0.0.1:%d:%s/%s:%d" % (local_port, namespace, pod, port)


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
    proc = subprocess.Popen([sys.executable, "-c", _BOOT, MARKER, spec], stdin=subprocess.PIPE,
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
    if settings.get("validate_certs") is False:
        configuration.verify_ssl = False
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
    """Listen on 127.0.0.1:<local_port> and forward every connection to the pod (runs until killed)."""
    api = _api(settings)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(settings["local_port"])))
    listener.listen(64)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 2)  # the starter has read what a failed start printed; nothing more is read
    while True:
        conn, _addr = listener.accept()
        try:
            remote = _connect(api, settings)
        except Exception:  # pylint: disable=broad-except
            conn.close()  # the pod is gone or not reachable: this connection fails, the forward stays
            continue
        threading.Thread(target=_pump, args=(conn, remote), daemon=True).start()


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
