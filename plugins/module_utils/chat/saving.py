# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Saving: answers written to files.

A ``data:`` URI answer (a generated video) becomes a file under ``output_dir``, written
through a temp file and renamed, so a reader never sees half of one. A batch's full answers
go to one JSON Lines file (:class:`ResultsFile`): each answer is appended as it arrives and
flushed to disk, so an interrupted batch keeps what it was told, and a batch run again with
``resume`` skips what it already holds; once the batch is done the file is rewritten in input
order, one line per item. The output folders are made and checked before anything is sent.
"""

import base64
import binascii
import errno
import json
import os
import re
import stat
import threading

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import write_atomically

MIME_TYPES = catalog.REQUEST["mime_types"]
# The first extension listed for each MIME type (video/mp4 -> .mp4).
EXTENSION_OF_MIME = dict((mime, ext) for ext, mime in reversed(list(MIME_TYPES.items())))
DATA_ANSWER = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,")


def save_answer(content, folder, stem):
    """Write a ``data:<mime>;base64,...`` answer (cosmos-predict2.5's video) to
    ``<folder>/<stem><ext>`` (``.mp4`` for ``video/mp4``) through a temp file;
    return its path, or ``None`` when ``content`` is not a data URI."""
    match = DATA_ANSWER.match(content) if isinstance(content, str) else None
    if match is None:
        return None
    extension = EXTENSION_OF_MIME.get(match.group(1), ".bin")
    try:
        data = base64.b64decode(content[match.end():], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaoInferenceError("the service answered a %s data URI that is not valid base64: %s"
                                % (match.group(1), exc), error_type="bad_answer")
    path = os.path.join(folder, stem + extension)
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise TaoInferenceError("cannot save the answer to %s: %s" % (path, exc.strerror or exc))
    return path


def _line(item, record):
    """One line of the results file: the record with the item's prompt."""
    line = {"id": record["id"], "prompt": item.prompt}
    line.update(record)
    line.pop("resumed", None)
    return (json.dumps(line) + "\n").encode("utf-8")


def write_jsonl(path, items, records, mode=0o644):
    """Every full answer, one JSON object a line, in input order (with the prompt), with ``mode``."""
    try:
        write_atomically(path, (_line(item, record) for item, record in zip(items, records)), mode=mode)
    except OSError as exc:
        raise TaoInferenceError("cannot write output_path %s: %s (the answers are in the result)"
                                % (path, exc.strerror or exc))


def _owner_name(uid):
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return "uid %d" % uid


def _check_results_file(path, st):
    """Refuse an output_path that is not a regular file of this user's (a folder, a link, a device,
    a FIFO, another user's file)."""
    if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        raise TaoInferenceError("output_path %s is a folder or a symbolic link; give the path of a file to write"
                                % path)
    if not stat.S_ISREG(st.st_mode):
        raise TaoInferenceError("output_path %s is not a regular file (a device, a FIFO or a socket); give the "
                                "path of a file to write" % path)
    if st.st_uid != os.geteuid():
        raise TaoInferenceError("output_path %s belongs to %s, not to you; refusing to write to it. Give a path "
                                "of your own, or remove that file first" % (path, _owner_name(st.st_uid)))


class ResultsFile(object):
    """The JSON Lines file of a batch's answers, written as they arrive.

    Each answer is one ``write`` of a whole line to a file opened for appending, then ``fsync``:
    a batch cut short leaves every line it wrote complete and on disk (at worst the very last line
    is half written, and is dropped when the file is read again). With ``resume``, the file's
    answered lines (``status: ok``) are read first; an item whose ``id`` and ``prompt`` match one
    of them is not sent again. Without ``resume``, the file is started afresh. :meth:`finish`
    rewrites it atomically in input order, one line per item.
    """

    def __init__(self, path, resume=False):
        self.path = path
        self.resume = resume
        self._fd = None
        self._mode = 0o644
        self._lock = threading.Lock()

    def _lstat(self):
        try:
            st = os.lstat(self.path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise TaoInferenceError("cannot read output_path %s: %s" % (self.path, exc.strerror or exc))
        _check_results_file(self.path, st)
        return st

    def answered(self):
        """``{id: line}`` of every answered item the file holds (with ``resume``; else ``{}``)."""
        if not self.resume or self._lstat() is None:
            return {}
        found = {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise TaoInferenceError("cannot read output_path %s to resume: %s" % (self.path, exc.strerror or exc))
        with os.fdopen(fd, "rb") as handle:
            _check_results_file(self.path, os.fstat(handle.fileno()))
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # the half-written last line of a run that was cut short
                try:
                    line = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    continue
                if isinstance(line, dict) and line.get("status") == "ok" and isinstance(line.get("id"), str):
                    found[line["id"]] = line
        return found

    def open(self):
        """Open the file for appending (made when missing; started afresh without ``resume``)."""
        existing = self._lstat()
        flags = os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        flags |= os.O_RDWR if self.resume else os.O_WRONLY
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise TaoInferenceError("cannot write output_path %s: %s" % (self.path, exc.strerror or exc))
        try:
            st = os.fstat(fd)
            _check_results_file(self.path, st)
            if existing is not None and (st.st_dev, st.st_ino) != (existing.st_dev, existing.st_ino):
                raise TaoInferenceError("output_path %s was replaced while it was opened; run again" % self.path)
            if not self.resume:
                os.ftruncate(fd, 0)  # only once it is known to be this user's regular file
            elif st.st_size:
                self._drop_half_line(fd, st.st_size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._mode = stat.S_IMODE(st.st_mode)  # the user's (or their umask's): kept by the final rewrite

    @staticmethod
    def _drop_half_line(fd, size):
        """Cut a last line that has no end (a run cut short mid-write) so the next line starts clean."""
        if os.pread(fd, 1, size - 1) == b"\n":
            return
        position = size
        while position > 0:
            start = max(0, position - 65536)
            tail = os.pread(fd, position - start, start)
            cut = tail.rfind(b"\n")
            if cut >= 0 or start == 0:
                keep = start + cut + 1 if cut >= 0 else 0
                if keep != size:
                    os.ftruncate(fd, keep)
                return
            position = start

    def append(self, item, record):
        """Write one answer (a whole line) and flush it to disk."""
        data = _line(item, record)
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, data)
                os.fsync(self._fd)
            except OSError as exc:
                raise TaoInferenceError("cannot write output_path %s: %s (the answers are in the result)"
                                        % (self.path, exc.strerror or exc))

    def finish(self, items, records):
        """Rewrite the file in input order, one line per item (atomically: a reader sees the old or the new)."""
        self.close()
        write_jsonl(self.path, items, records, self._mode)

    def close(self):
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def prepare_outputs(output_dir=None, output_path=None):
    """Make the output folders now, so an unwritable one fails before anything is sent."""
    folders = [output_dir, os.path.dirname(os.path.abspath(output_path)) if output_path else None]
    for folder in [f for f in folders if f]:
        try:
            if not os.path.isdir(folder):
                os.makedirs(folder)
        except OSError as exc:
            raise TaoInferenceError("cannot create the output folder %s: %s" % (folder, exc.strerror))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TaoInferenceError("the output folder %s is not writable" % folder)
    if output_path:
        try:
            _check_results_file(output_path, os.lstat(output_path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TaoInferenceError("cannot read output_path %s: %s" % (output_path, exc.strerror or exc))
