# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Saving: answers written to files.

A ``data:`` URI answer (a generated video) becomes a file under ``output_dir``; a batch's
full answers become one JSON Lines file. Every file is written through a temp file and
renamed, so a reader never sees half of one; the output folders are made and checked
before anything is sent.
"""

import base64
import binascii
import json
import os
import re

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


def write_jsonl(path, items, records):
    """Every full answer, one JSON object a line, in input order (with the prompt)."""
    def lines():
        for item, record in zip(items, records):
            line = {"id": record["id"], "prompt": item.prompt}
            line.update(record)
            yield (json.dumps(line) + "\n").encode("utf-8")
    try:
        write_atomically(path, lines())
    except OSError as exc:
        raise TaoInferenceError("cannot write output_path %s: %s (the answers are in the result)"
                                % (path, exc.strerror or exc))


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
    if output_path and (os.path.isdir(output_path) or os.path.islink(output_path)):
        raise TaoInferenceError("output_path %s is a folder or a symbolic link; give the path of a file to write "
                                "(it is replaced as a whole)" % output_path)
