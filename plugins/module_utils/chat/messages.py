# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Messages: the message list and the JSON body of one request, checked against the network_arch.

A request is either a prompt (with an optional system prompt and media) or a full
``messages`` list; the service answers the first user message. An arch that needs media
gets an image or a video in every request, or the request is refused before it is sent.
"""

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.chat.media import (
    check_kind, label_of, media_item, reject_cloud,
)
from ansible_collections.tao.inference.plugins.module_utils.chat.sampling import apply_sampling
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

CONSTRAINTS = catalog.REQUEST["network_arch_constraints"]


def _first(messages, role):
    for message in messages:
        if isinstance(message, dict) and message.get("role") == role:
            return message
    return None


def _media_kinds(message):
    content = message.get("content") if message else None
    if not isinstance(content, list):
        return []
    return [item.get("type") for item in content
            if isinstance(item, dict) and item.get("type") in ("image_url", "video_url")]


def check_messages(network_arch, messages):
    """Validate a message list against the arch before sending it."""
    if not isinstance(messages, list) or not messages:
        raise TaoInferenceError("messages must be a non-empty list of {role, content} items")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TaoInferenceError("messages[%d] must be a dict with role and content" % index)
    user = _first(messages, "user")
    if user is None:
        raise TaoInferenceError("messages holds no user message; the service answers the first user message")
    content = user["content"]
    if isinstance(content, list):
        for item in content:
            if not isinstance(item, dict) or "type" not in item:
                raise TaoInferenceError("each content item needs a type (text, image_url or video_url)")
            kind = item["type"]
            if kind in ("image_url", "video_url"):
                url = ((item.get(kind) or {}).get("url") or "")
                label = label_of(url)
                reject_cloud(url, label)
                if url.startswith("data:"):
                    check_kind(network_arch, label, mime=url[5:].split(",", 1)[0].split(";")[0].lower())
            elif kind != "text":
                raise TaoInferenceError("content item type %s is not one of text, image_url, video_url" % kind)
    if CONSTRAINTS[network_arch].get("media_required") and not _media_kinds(user):
        raise TaoInferenceError(
            "%s needs an image or a video in every request; add one with media (a local file, an http(s) URL "
            "or a data: URI)" % network_arch)
    return user


def build_messages(network_arch, prompt=None, system_prompt=None, media=None, messages=None, read=None,
                   local_url=None, base_dir=None):
    """The message list of one request, checked against the arch (see :func:`media.media_item`
    for ``read``, ``local_url`` and ``base_dir``)."""
    if messages:
        if prompt or system_prompt or media:
            raise TaoInferenceError("give either messages, or prompt/system_prompt/media, not both")
        check_messages(network_arch, messages)
        return messages
    if not prompt:
        raise TaoInferenceError("prompt is required (or give a full messages list)")
    items = [media_item(network_arch, m, read, local_url, base_dir) for m in (media or [])]
    user = {"role": "user", "content": items + [{"type": "text", "text": prompt}] if items else prompt}
    built = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [user]
    check_messages(network_arch, built)
    return built


def inference_type(messages):
    """What the first user message asks for, by its media: video2world, image2world or text2world."""
    kinds = _media_kinds(_first(messages, "user"))
    return "video2world" if "video_url" in kinds else "image2world" if "image_url" in kinds else "text2world"


def build_body(network_arch, messages, sampling):
    """``(body, sampling_applied, warnings)``: the JSON body of one request, with its sampling values
    (see :func:`sampling.apply_sampling`) and, for an arch that wants it, its ``inference_type``."""
    body_fields, applied, warnings = apply_sampling(network_arch, sampling)
    body = {"messages": messages}
    body.update(body_fields)
    if CONSTRAINTS[network_arch].get("inference_type"):
        body["inference_type"] = inference_type(messages)
    return body, applied, warnings
