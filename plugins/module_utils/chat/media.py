# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Media: the images and videos of a request, checked against the network_arch before anything is sent.

A reference is an http(s) URL (passed on as it is), a ``data:`` URI, or a local file (sent
inline as a ``data:<mime>;base64,...`` URI). Cloud URIs are refused: the service reads no
cloud storage. The MIME type of a file comes from its extension, spelled as the arch's
server expects it.

:class:`MediaStore` keeps memory flat when many requests carry large local files: each
distinct file is base64-encoded once, in chunks, into a temp file, and a body is streamed
around it.
"""

import base64
import os
import re
import shutil
import tempfile
import threading
import uuid

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.chat.sending import JSON_HEADERS
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

CONSTRAINTS = catalog.REQUEST["network_arch_constraints"]
MIME_TYPES = catalog.REQUEST["mime_types"]
MAX_DATA_BYTES = catalog.REQUEST["data_uri_max_bytes"]
ENCODE_CHUNK = 3 << 18  # 768 KiB of file, a multiple of 3: base64 chunks join into the file's base64
STREAM_CHUNK = 1 << 20


def _extension(path):
    return os.path.splitext(urlsplit(path).path if "://" in path else path)[1].lower()


def _allowed(network_arch):
    ext = CONSTRAINTS[network_arch].get("extensions") or {}
    return ext.get("image") or [], ext.get("video") or []


def mime_types(network_arch):
    """Extension -> MIME type as ``network_arch``'s server expects it (base table plus the
    arch's own spellings, e.g. tao-dataservices wants video/mov, not video/quicktime)."""
    table = dict(MIME_TYPES)
    table.update(CONSTRAINTS[network_arch].get("mime_types") or {})
    return table


def check_kind(network_arch, label, ext=None, mime=None):
    images, videos = _allowed(network_arch)
    table = mime_types(network_arch)
    allowed_mimes = dict((table[e], "image") for e in images if e in table)
    allowed_mimes.update((table[e], "video") for e in videos if e in table)
    if mime is not None:
        if mime not in allowed_mimes:
            raise TaoInferenceError("media %s has MIME type %s, which %s does not accept; accepted: %s"
                                    % (label, mime, network_arch, ", ".join(sorted(allowed_mimes))))
        return allowed_mimes[mime]
    if ext in images:
        return "image"
    if ext in videos:
        return "video"
    raise TaoInferenceError("media %s has extension '%s', which %s does not accept; images: %s; videos: %s"
                            % (label, ext or "(none)", network_arch, " ".join(images), " ".join(videos)))


def reject_cloud(uri, label):
    for scheme in catalog.REQUEST["rejected_media_schemes"]:
        if uri.lower().startswith(scheme):
            raise TaoInferenceError(
                "media %s is a cloud URI (%s); the service reads no cloud storage: give an http(s) URL, a data: "
                "URI or a local file" % (label, scheme))


class MediaRef(object):
    """A checked media reference: ``url`` (an http(s) URL or a data URI) or
    ``path`` (a local file, sent as a ``data:<mime>;base64,...`` URI)."""

    __slots__ = ("kind", "url", "path", "mime")

    def __init__(self, kind, url=None, path=None, mime=None):
        self.kind = kind
        self.url = url
        self.path = path
        self.mime = mime


def label_of(uri):
    return uri if len(uri) < 80 else uri[:77] + "..."


def check_media(network_arch, media, base_dir=None):
    """Check one media reference against the arch (scheme, extension or MIME
    type, size, existence) without reading it; return a :class:`MediaRef`.
    A relative local path is taken relative to ``base_dir`` when given."""
    uri = str(media.get("url") if isinstance(media, dict) else media).strip()
    label = label_of(uri)
    reject_cloud(uri, label)
    if uri.startswith("data:"):
        kind = check_kind(network_arch, label, mime=uri[5:].split(",", 1)[0].split(";")[0].lower())
        payload = uri.split(",", 1)[1] if "," in uri else ""
        if len(payload) * 3 // 4 > MAX_DATA_BYTES:
            raise TaoInferenceError("media %s is larger than %d MiB" % (label, MAX_DATA_BYTES >> 20))
        return MediaRef(kind, url=uri)
    if uri.startswith(("http://", "https://")):
        declared = media.get("type") if isinstance(media, dict) else None
        kind = declared if declared in ("image", "video") else check_kind(network_arch, label, ext=_extension(uri))
        return MediaRef(kind, url=uri)
    if "://" in uri and not uri.startswith("file://"):
        raise TaoInferenceError("media %s has an unknown scheme; give an http(s) URL, a data: URI or a local file"
                                % label)
    path = os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri)
    if base_dir and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    kind = check_kind(network_arch, label, ext=_extension(path))
    if not os.path.isfile(path):
        raise TaoInferenceError("media file %s does not exist on the host that runs the module" % path)
    size = os.path.getsize(path)
    if size > MAX_DATA_BYTES:
        raise TaoInferenceError("media file %s is %d MiB; the service accepts at most %d MiB"
                                % (path, size >> 20, MAX_DATA_BYTES >> 20))
    return MediaRef(kind, path=path, mime=mime_types(network_arch)[_extension(path)])


def data_uri_prefix(mime):
    return "data:%s;base64," % mime


def media_item(network_arch, media, read=None, local_url=None, base_dir=None):
    """One content item (``image_url`` / ``video_url``) for ``media``: an
    http(s) URL, a ``data:`` URI, or a local file. ``local_url(ref)`` gives the
    URL of a local file; by default the file is read and inlined as a data URI."""
    ref = check_media(network_arch, media, base_dir)
    if ref.path is None:
        url = ref.url
    elif local_url is not None:
        url = local_url(ref)
    else:
        url = data_uri_prefix(ref.mime) + base64.b64encode((read or _read_file)(ref.path)).decode("ascii")
    key = "%s_url" % ref.kind
    return {"type": key, key: {"url": url}}


def _read_file(path):
    with open(path, "rb") as handle:
        return handle.read()


# -- local files of many requests: placeholders, encoded once, streamed --------
class MediaStore(object):
    """Local media files of a batch.

    While bodies are built, :meth:`url` stands in for a file with a placeholder;
    when a body is first sent, each distinct file is base64-encoded once (in
    chunks) into a temp file, and every body using it is streamed around it.
    Use as a context manager: the temp folder goes on exit.
    """

    def __init__(self, tmpdir=None, opener=open):
        self._prefix = "tao-media-%s-" % uuid.uuid4().hex
        self._placeholder = re.compile(re.escape(self._prefix) + r"(\d+)")
        self._tmpdir = tmpdir
        self._opener = opener
        self._sources = []  # key -> real path
        self._locks = []  # key -> lock held while the file is encoded
        self._keys = {}  # real path -> key
        self._encoded = {}  # key -> (temp path, size)
        self._folder = None
        self._folder_lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def url(self, ref):
        """The data URI placeholder of a local file (a :class:`MediaRef`)."""
        real = os.path.realpath(ref.path)
        if real not in self._keys:
            self._keys[real] = len(self._sources)
            self._sources.append(real)
            self._locks.append(threading.Lock())
        return data_uri_prefix(ref.mime) + self._prefix + str(self._keys[real])

    def split(self, text):
        """A JSON body as parts: bytes, and the int key of a file where its base64 goes."""
        parts = []
        for index, piece in enumerate(self._placeholder.split(text)):
            if index % 2:
                parts.append(int(piece))
            elif piece:
                parts.append(piece.encode("utf-8"))
        return parts

    def body(self, parts):
        """``(content, headers)`` for httpx: bytes when ``parts`` holds no file,
        else a stream (a generator) of the whole body with its exact Content-Length."""
        if not any(isinstance(part, int) for part in parts):
            return b"".join(parts), JSON_HEADERS
        files = dict((part, self._ensure(part)) for part in parts if isinstance(part, int))
        headers = dict(JSON_HEADERS)
        headers["Content-Length"] = str(sum(files[p][1] if isinstance(p, int) else len(p) for p in parts))
        return self._stream(parts, files), headers

    @staticmethod
    def _stream(parts, files):
        for part in parts:
            if not isinstance(part, int):
                yield part
                continue
            with open(files[part][0], "rb") as handle:
                chunk = handle.read(STREAM_CHUNK)
                while chunk:
                    yield chunk
                    chunk = handle.read(STREAM_CHUNK)

    def _ensure(self, key):
        """The encoded file of ``key``: made by the first request that needs it, while the others wait."""
        with self._locks[key]:
            if key not in self._encoded:
                self._encoded[key] = self._encode(key)
            return self._encoded[key]

    def _temp_folder(self):
        with self._folder_lock:
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="tao-batch-", dir=self._tmpdir)
            return self._folder

    def _encode(self, key):
        target = os.path.join(self._temp_folder(), "%d.b64" % key)
        size = 0
        with self._opener(self._sources[key], "rb") as source, open(target, "wb") as out:
            chunk = source.read(ENCODE_CHUNK)
            while chunk:
                encoded = base64.b64encode(chunk)
                out.write(encoded)
                size += len(encoded)
                chunk = source.read(ENCODE_CHUNK)
        return target, size
