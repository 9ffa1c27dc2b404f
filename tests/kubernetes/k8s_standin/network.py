"""Service traffic and port-forwarding.

NodePort and LoadBalancer Services get TCP listeners (``127.0.0.1:<nodePort>``; a LoadBalancer also gets
its own loopback address ``127.0.0.x`` on the Service port, published in its status after a delay) that
proxy each connection to a ready endpoint, as kube-proxy does from the Endpoints object.  Port-forward
speaks the WebSocket channel protocol (``v4.channel.k8s.io`` / ``portforward.k8s.io``) of the kubelet."""

import base64
import hashlib
import json
import logging
import select
import socket
import ssl
import struct
import threading
from typing import Any, Dict, List, Optional, Tuple

from .cluster import ENDPOINTS, SERVICE, Cluster
from .controllers import EventRecorder

LOG = logging.getLogger("k8s_standin")
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")


def pump(left: socket.socket, right: socket.socket) -> None:
    """Copy bytes both ways until both directions are closed."""
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    other = threading.Thread(target=copy, args=(right, left), daemon=True)
    other.start()
    copy(left, right)
    other.join()
    left.close()
    right.close()


class Listener(threading.Thread):
    """One address:port of a Service, proxied to its ready endpoints."""

    def __init__(self, network: "ServiceNetwork", address: str, port: int, namespace: str, service: str,
                 port_name: str) -> None:
        super().__init__(name="svc-%s/%s-%s:%d" % (namespace, service, address, port), daemon=True)
        self.network = network
        self.address, self.port = address, port
        self.namespace, self.service, self.port_name = namespace, service, port_name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((address, port))
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise
        self.closed = False

    def run(self) -> None:
        while not self.closed:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        """Proxy one connection; closed at once when no endpoint is ready."""
        target = self.network.endpoint(self.namespace, self.service, self.port_name)
        if target is None:
            conn.close()
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            conn.close()
            return
        pump(conn, upstream)

    def close(self) -> None:
        """Stop listening."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ServiceNetwork:
    """The listeners of every NodePort and LoadBalancer Service."""

    def __init__(self, cluster: Cluster, events: EventRecorder) -> None:
        self.cluster = cluster
        self.events = events
        self.lock = threading.Lock()
        self.listeners: Dict[str, List[Listener]] = {}
        self.shapes: Dict[str, str] = {}
        self.lb_addresses: Dict[str, str] = {}
        self.turn = 0

    def sync(self, svc: Dict[str, Any]) -> None:
        """Open (or re-open after a change of type or ports) the Service's listeners."""
        meta, spec = svc["metadata"], svc["spec"]
        uid = meta["uid"]
        kind = spec.get("type", "ClusterIP")
        shape = json.dumps([kind, spec.get("ports")], sort_keys=True)
        with self.lock:
            if self.shapes.get(uid) == shape:
                return
            self.shapes[uid] = shape
            for listener in self.listeners.pop(uid, []):
                listener.close()
            if kind != "LoadBalancer" and self.lb_addresses.pop(uid, None):
                self._unpublish(meta["namespace"], meta["name"], uid)
            if kind not in ("NodePort", "LoadBalancer"):
                return
            opened = []
            for i, port in enumerate(spec.get("ports") or []):
                if port.get("nodePort") and port.get("protocol", "TCP") == "TCP":
                    opened.append(self._open("127.0.0.1", port["nodePort"], svc, port.get("name") or str(i)))
            self.listeners[uid] = [listener for listener in opened if listener is not None]
            if kind == "LoadBalancer":
                address = self.lb_addresses.get(uid)
                if address:
                    self._open_lb(svc, address)
                else:
                    self.events.record(svc, "Normal", "EnsuringLoadBalancer", "Ensuring load balancer", "service-controller")
                    timer = threading.Timer(self.cluster.config.lb_delay, self.provision, args=(meta["namespace"], meta["name"], uid))
                    timer.daemon = True
                    timer.start()

    def _open(self, address: str, port: int, svc: Dict[str, Any], port_name: str) -> Optional[Listener]:
        meta = svc["metadata"]
        try:
            listener = Listener(self, address, port, meta["namespace"], meta["name"], port_name)
        except OSError as exc:
            self.events.record(svc, "Warning", "FailedToListen", "cannot listen on %s:%d: %s" % (address, port, exc.strerror),
                               "kube-proxy")
            return None
        listener.start()
        return listener

    def _open_lb(self, svc: Dict[str, Any], address: str) -> bool:
        uid = svc["metadata"]["uid"]
        opened = []
        for i, port in enumerate(svc["spec"].get("ports") or []):
            if port.get("protocol", "TCP") != "TCP":
                continue
            try:
                listener = Listener(self, address, port["port"], svc["metadata"]["namespace"], svc["metadata"]["name"],
                                    port.get("name") or str(i))
            except OSError:
                for done in opened:
                    done.close()
                return False
            opened.append(listener)
        for listener in opened:
            listener.start()
        self.listeners.setdefault(uid, []).extend(opened)
        return True

    def provision(self, namespace: str, name: str, uid: str) -> None:
        """Give a LoadBalancer Service its own loopback address and publish it in the status."""
        svc = self.cluster.store.find(SERVICE, namespace, name)
        if svc is None or svc["metadata"]["uid"] != uid or svc["spec"].get("type") != "LoadBalancer":
            return
        with self.lock:
            if uid in self.lb_addresses:
                return
            taken = set(self.lb_addresses.values())
            address = None
            for last in range(2, 255):
                candidate = "127.0.0.%d" % last
                if candidate not in taken and self._open_lb(svc, candidate):
                    address = candidate
                    break
            if address is None:
                self.events.record(svc, "Warning", "SyncLoadBalancerFailed", "Error syncing load balancer: no free "
                                   "loopback address 127.0.0.2-254 for the Service ports", "service-controller")
                return
            self.lb_addresses[uid] = address

        def publish(obj: Dict[str, Any]) -> Optional[bool]:
            if obj["metadata"]["uid"] != uid:
                return False
            obj.setdefault("status", {})["loadBalancer"] = {"ingress": [{"ip": address, "ipMode": "VIP"}]}
            return None

        stored = self.cluster.store.mutate(SERVICE, namespace, name, publish)
        if stored is not None:
            self.events.record(stored, "Normal", "EnsuredLoadBalancer", "Ensured load balancer", "service-controller")

    def _unpublish(self, namespace: str, name: str, uid: str) -> None:
        def clear(obj: Dict[str, Any]) -> Optional[bool]:
            if obj["metadata"]["uid"] != uid:
                return False
            obj.setdefault("status", {})["loadBalancer"] = {}
            return None

        self.cluster.store.mutate(SERVICE, namespace, name, clear)

    def remove(self, uid: str) -> None:
        """Close a deleted Service's listeners and free its address."""
        with self.lock:
            for listener in self.listeners.pop(uid, []):
                listener.close()
            self.shapes.pop(uid, None)
            self.lb_addresses.pop(uid, None)

    def endpoint(self, namespace: str, service: str, port_name: str) -> Optional[Tuple[str, int]]:
        """A ready endpoint (round robin) of the Service port, from its Endpoints object."""
        svc = self.cluster.store.find(SERVICE, namespace, service)
        endpoints = self.cluster.store.find(ENDPOINTS, namespace, service)
        if svc is None or endpoints is None:
            return None
        ports = svc["spec"].get("ports") or []
        wanted = next((p.get("name") or "" for i, p in enumerate(ports) if (p.get("name") or str(i)) == port_name), "")
        choices = []
        for subset in endpoints.get("subsets") or []:
            port = next((p["port"] for p in subset.get("ports") or [] if (p.get("name") or "") == wanted), None)
            if port is None:
                continue
            choices += [(a["ip"], port) for a in subset.get("addresses") or []]
        if not choices:
            return None
        with self.lock:
            self.turn += 1
            return choices[self.turn % len(choices)]

    def shutdown(self) -> None:
        """Close every listener."""
        with self.lock:
            for listeners in self.listeners.values():
                for listener in listeners:
                    listener.close()
            self.listeners.clear()


# ----------------------------------------------------------------------------------------------
# WebSocket port-forward
# ----------------------------------------------------------------------------------------------
def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client key."""
    return base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()


def choose_protocol(offered: str) -> Optional[str]:
    """The first offered subprotocol the kubelet's port-forward speaks."""
    for name in (p.strip() for p in offered.split(",")):
        if name in PORTFORWARD_PROTOCOLS:
            return name
    return None


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (FIN, unmasked)."""
    head = bytes([0x80 | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([size])
    elif size < 65536:
        head += bytes([126]) + struct.pack(">H", size)
    else:
        head += bytes([127]) + struct.pack(">Q", size)
    return head + payload


class FrameReader:
    """Client frames (masked, possibly fragmented) out of a byte stream."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.fragments = bytearray()
        self.fragment_opcode = 0

    def feed(self, data: bytes) -> List[Tuple[int, bytes]]:
        """Whole messages now available: (opcode, payload)."""
        self.buffer += data
        out = []
        while True:
            if len(self.buffer) < 2:
                return out
            first, second = self.buffer[0], self.buffer[1]
            size, pos = second & 0x7F, 2
            if size == 126:
                if len(self.buffer) < 4:
                    return out
                size, pos = struct.unpack(">H", self.buffer[2:4])[0], 4
            elif size == 127:
                if len(self.buffer) < 10:
                    return out
                size, pos = struct.unpack(">Q", self.buffer[2:10])[0], 10
            mask = b""
            if second & 0x80:
                mask, pos = bytes(self.buffer[pos:pos + 4]), pos + 4
            if len(self.buffer) < pos + size:
                return out
            payload = bytes(self.buffer[pos:pos + size])
            del self.buffer[:pos + size]
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode, fin = first & 0x0F, bool(first & 0x80)
            if opcode >= 0x8:
                out.append((opcode, payload))
            elif opcode == 0:
                self.fragments += payload
                if fin:
                    out.append((self.fragment_opcode, bytes(self.fragments)))
                    self.fragments = bytearray()
            elif fin:
                out.append((opcode, payload))
            else:
                self.fragment_opcode, self.fragments = opcode, bytearray(payload)


class PortForward:
    """One port-forward WebSocket: per port a data channel (2i) and an error channel (2i+1), each opened with the
    port number (2 bytes, little endian); bytes go to and from the pod IP:port."""

    def __init__(self, sock: socket.socket, pod_ip: str, ports: List[int], pod_name: str, pod_uid: str) -> None:
        self.sock = sock
        self.pod_ip = pod_ip
        self.ports = ports
        self.pod_name, self.pod_uid = pod_name, pod_uid

    def send(self, opcode: int, payload: bytes) -> None:
        """Send one frame to the client."""
        self.sock.sendall(frame(opcode, payload))

    def run(self) -> None:  # pylint: disable=too-many-branches
        """Serve until the client closes or every pod connection has ended."""
        upstream: Dict[int, socket.socket] = {}
        for i, port in enumerate(self.ports):
            prefix = struct.pack("<H", port)
            self.send(0x2, bytes([2 * i]) + prefix)
            self.send(0x2, bytes([2 * i + 1]) + prefix)
        for i, port in enumerate(self.ports):
            try:
                upstream[i] = socket.create_connection((self.pod_ip, port), timeout=5)
                upstream[i].settimeout(None)
            except OSError as exc:
                message = ("error forwarding port %d to pod %s, uid : failed to connect to %s:%d inside the pod's network "
                           "namespace: dial tcp4 %s:%d: %s" % (port, self.pod_uid, self.pod_ip, port, self.pod_ip, port,
                                                               exc.strerror or exc))
                self.send(0x2, bytes([2 * i + 1]) + message.encode())
        reader = FrameReader()
        try:
            while upstream:
                pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
                readable = [self.sock] if pending else select.select([self.sock] + list(upstream.values()), [], [], 30)[0]
                for ready in readable:
                    if ready is self.sock:
                        data = self.sock.recv(65536)
                        if not data:
                            return
                        for opcode, payload in reader.feed(data):
                            if opcode == 0x8:
                                self.send(0x8, payload[:2] or struct.pack(">H", 1000))
                                return
                            if opcode == 0x9:
                                self.send(0xA, payload)
                            elif opcode in (0x1, 0x2) and payload:
                                channel, body = payload[0], payload[1:]
                                target = upstream.get(channel // 2) if channel % 2 == 0 else None
                                if target is not None and body:
                                    target.sendall(body)
                        continue
                    index = next(i for i, s in upstream.items() if s is ready)
                    data = ready.recv(65536)
                    if data:
                        self.send(0x2, bytes([2 * index]) + data)
                    else:
                        ready.close()
                        del upstream[index]
            self.send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        finally:
            for sock in upstream.values():
                sock.close()
