"""Parsing, validation and answers of ``POST /v1/chat/completions``.

The rules follow the real servers (tao-core's base inference server and its
cosmos-rl / HuggingFace subclasses):

* only the first ``user`` message (and the first ``system`` message) is used;
  inside it the last ``text`` item is the prompt, ``image_url`` / ``video_url``
  items are the media;
* a structurally wrong request (wrong types) raises :class:`InternalError`
  (HTTP 500 ``internal_error``), a semantically wrong one raises
  :class:`InvalidRequest` (HTTP 400 ``invalid_request``);
* the answer is deterministic for the same input and says that it comes from
  the reference microservice.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from . import COSMOS_PREDICT, COSMOS_RL, TAO_DATASERVICES

BANNER = "[tao-inference reference microservice]"

MAX_MEDIA_BYTES = 512 * 1024 * 1024
CLOUD_PREFIXES = ("s3://", "gs://", "az://", "cs://", "aws://")

# Inline (data: URI) MIME types and the file extension the server gives them.
# The real server's table plus the registered names of AVI and QuickTime.
MIME_EXTENSIONS: Dict[str, str] = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/x-matroska": ".mkv",
    "video/mkv": ".mkv",
    "video/webm": ".webm",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/quicktime": ".mov",
    "video/mov": ".mov",
}

# tao-core's own table (``_EXT_MAP`` of its base inference server, which the
# tao-dataservices HuggingFace server uses): looked up as sent, case-sensitive,
# without the registered AVI / QuickTime names, so ``data:video/quicktime`` and
# ``data:IMAGE/PNG`` are 400 there (checked against nvidia-tao-core 7.3.0).
TAO_CORE_MIME_EXTENSIONS: Dict[str, str] = {
    "video/mp4": ".mp4",
    "video/avi": ".avi",
    "video/webm": ".webm",
    "video/mkv": ".mkv",
    "video/x-matroska": ".mkv",
    "video/mov": ".mov",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov"})
# cosmos-rl accepts only these images; the other servers also take .webp/.gif
# and treat an unknown extension as an image.
COSMOS_RL_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tiff"})

PREDICT_INFERENCE_TYPES = ("text2world", "image2world", "video2world")

# Per-flavor sampling defaults (CONTRACT section 6).
DEFAULT_MAX_TOKENS = {COSMOS_RL: 1024, TAO_DATASERVICES: 1024, COSMOS_PREDICT: 77}
DEFAULT_TEMPERATURE = 0.7
PREDICT_DEFAULTS = {"guidance": 7, "num_steps": 35, "seed": 0}


class InvalidRequest(ValueError):
    """The request is well-formed but cannot be served (HTTP 400 ``invalid_request``)."""


class InternalError(Exception):
    """The request is malformed or wrongly typed (HTTP 500 ``internal_error``)."""


@dataclass(frozen=True)
class Media:
    """One image or video of the user message."""

    kind: str  # "image" or "video"
    source: str  # "http" or "data"
    extension: str  # ".jpg", ".mp4"... ("" when the URL has none)


@dataclass
class ChatRequest:
    """The parts of a chat completion request that the servers use."""

    prompt: str = ""
    system_prompt: str = ""
    has_user_message: bool = False
    media: List[Media] = field(default_factory=list)
    sampling: Dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> int:
        """Number of images in the user message."""
        return sum(1 for item in self.media if item.kind == "image")

    @property
    def videos(self) -> int:
        """Number of videos in the user message."""
        return sum(1 for item in self.media if item.kind == "video")


def parse_body(content_type: Optional[str], body: bytes) -> Any:
    """Decode the HTTP body like Flask's ``request.json`` inside the real handler.

    A non-JSON content type or malformed JSON is an internal error (the real
    server catches Werkzeug's exception in its generic handler); an empty body
    is an invalid request.
    """
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))):
        raise InternalError(
            "Did not attempt to load JSON data because the request Content-Type "
            f"was not 'application/json' (got {mime or 'none'!r})"
        )
    if not body.strip():
        raise InvalidRequest("Request body is required")
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
        raise InternalError(f"Failed to decode JSON object: {exc}") from exc


def parse_request(data: Any, flavor: str) -> ChatRequest:
    """Validate a decoded body and extract prompt, media and sampling fields."""
    if not data:
        raise InvalidRequest("Request body is required")
    if not isinstance(data, dict):
        raise InternalError(f"request body must be a JSON object, got {type(data).__name__}")

    messages = data.get("messages", [])
    if flavor == TAO_DATASERVICES and isinstance(messages, (dict, str)):
        # tao-core loops over whatever "messages" is: an object's keys or a
        # string's characters (so only an empty one gets as far as the prompt check).
        messages = list(messages)
    if not isinstance(messages, list):
        raise InternalError(f"'messages' must be a list, got {type(messages).__name__}")
    for message in messages:
        if not isinstance(message, dict):
            raise InternalError(f"every message must be an object, got {type(message).__name__}")

    request = ChatRequest()
    system = next((m for m in messages if m.get("role") == "system"), None)
    if system is not None:
        request.system_prompt = _text_of(system.get("content", ""))

    urls: List[Any] = []
    user = next((m for m in messages if m.get("role") == "user"), None)
    if user is not None:
        request.has_user_message = True
        content = user.get("content", [])
        if flavor == TAO_DATASERVICES and not isinstance(content, (str, list)):
            content = ""  # tao-core reads neither prompt nor media from it: "prompt is required"
        request.prompt, urls = _read_user_content(content)

    request.media = [classify_media(url, flavor) for url in urls]
    if flavor == TAO_DATASERVICES:
        # The HuggingFace server checks the prompt first, then the sampling
        # values reach transformers' generate().
        _check_requirements(request, flavor)
        request.sampling = _read_hf_sampling(data)
    else:
        request.sampling = _read_sampling(data, flavor)
        _check_requirements(request, flavor)
    return request


def _text_of(content: Any) -> str:
    """The text of a system message (a string, or the text items of a list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            item.get("text", "") for item in content
            if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
        )
    return ""


def _read_user_content(content: Any) -> Tuple[str, List[Any]]:
    """Return the prompt and the media URLs of the first user message."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InternalError(f"message 'content' must be a string or a list, got {type(content).__name__}")
    prompt = ""
    urls: List[Any] = []
    for item in content:
        if not isinstance(item, dict):
            raise InternalError(f"content items must be objects, got {type(item).__name__}")
        item_type = item.get("type")
        if item_type == "text":
            text = item.get("text", "")
            if not isinstance(text, str):
                raise InternalError(f"'text' must be a string, got {type(text).__name__}")
            prompt = text
        elif item_type in ("image_url", "video_url"):
            holder = item.get(item_type, {})
            if not isinstance(holder, dict):
                raise InternalError(f"'{item_type}' must be an object with a 'url'")
            url = holder.get("url")
            if url:
                urls.append(url)
    return prompt, urls


def classify_media(url: Any, flavor: str) -> Media:
    """Check one media URL and tell whether it is an image or a video.

    ``http(s)://`` URLs are accepted without being fetched; ``data:`` URIs must
    carry a known MIME type and valid base64 of at most 512 MiB.
    """
    if not isinstance(url, str):
        raise InternalError(f"media 'url' must be a string, got {type(url).__name__}")
    lowered = url.lower()
    if lowered.startswith(CLOUD_PREFIXES):
        raise InvalidRequest(
            "Cloud-storage URIs are not supported by the inference service: "
            f"{url}. Send the media inline (data: URI) or via an http(s):// URL."
        )
    if lowered.startswith("data:"):
        source = "data"
        extension = _check_data_uri(url, flavor)
    elif lowered.startswith(("http://", "https://")):
        source = "http"
        path = urlsplit(url).path
        name = path.rsplit("/", 1)[-1]
        extension = name[name.rfind("."):].lower() if "." in name else ""
    else:
        raise InvalidRequest(
            f"Unsupported media URL {url[:80]!r}: send a data:<mime>;base64,... URI or an http(s):// URL"
        )

    if extension in VIDEO_EXTENSIONS:
        return Media("video", source, extension)
    if flavor == COSMOS_RL and extension not in COSMOS_RL_IMAGE_EXTENSIONS:
        raise InvalidRequest(f"Unsupported file type: {extension or '(no extension)'}")
    return Media("image", source, extension)


def _check_data_uri(url: str, flavor: str) -> str:
    match = re.match(r"data:([^;,]+);base64,(.+)", url, re.DOTALL)
    if not match:
        raise InvalidRequest("Inline media must be a data:<mime>;base64,<payload> URI")
    if flavor == TAO_DATASERVICES:
        mime = match.group(1)
        extension = TAO_CORE_MIME_EXTENSIONS.get(mime)
    else:
        mime = match.group(1).strip().lower()
        extension = MIME_EXTENSIONS.get(mime)
    if extension is None:
        raise InvalidRequest(f"Unsupported media type: {mime}")
    payload = match.group(2)
    if len(payload) * 3 // 4 > MAX_MEDIA_BYTES:
        raise InvalidRequest(f"Media payload exceeds {MAX_MEDIA_BYTES} byte limit")
    try:
        base64.b64decode(payload)
    except binascii.Error as exc:
        raise InvalidRequest(f"Invalid base64 media payload: {exc}") from exc
    return extension


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_sampling(data: Dict[str, Any], flavor: str) -> Dict[str, Any]:
    """Type-check the sampling fields the flavor uses and fill in defaults."""
    checks: Dict[str, Tuple[Callable[[Any], bool], str]] = {"max_tokens": (_is_int, "an integer")}
    if flavor == COSMOS_PREDICT:
        checks.update({
            "guidance": (_is_number, "a number"),
            "num_steps": (_is_int, "an integer"),
            "seed": (_is_int, "an integer"),
            "negative_prompt": (lambda v: isinstance(v, str), "a string"),
            "inference_type": (lambda v: isinstance(v, str), "a string"),
        })
    else:
        checks.update({
            "temperature": (_is_number, "a number"),
            "top_p": (_is_number, "a number"),
            "top_k": (_is_int, "an integer"),
        })
    for name, (is_valid, expected) in checks.items():
        if name in data and not is_valid(data[name]):
            raise InternalError(f"'{name}' must be {expected}, got {type(data[name]).__name__}")

    sampling: Dict[str, Any] = {"max_tokens": data.get("max_tokens", DEFAULT_MAX_TOKENS[flavor])}
    if flavor == COSMOS_PREDICT:
        for name, default in PREDICT_DEFAULTS.items():
            sampling[name] = data.get(name, default)
        for name in ("negative_prompt", "inference_type"):
            if name in data:
                sampling[name] = data[name]
    else:
        sampling["temperature"] = data.get("temperature", DEFAULT_TEMPERATURE)
        if "top_p" in data:
            sampling["top_p"] = data["top_p"]
    return sampling


_OPERATORS: Dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, "<": operator.lt, ">": operator.gt}


def _compare(left: Any, symbol: str, right: Any) -> bool:
    """``left <symbol> right`` as Python evaluates it; a TypeError is the real server's 500."""
    try:
        return bool(_OPERATORS[symbol](left, right))
    except TypeError:
        raise InternalError(
            f"'{symbol}' not supported between instances of '{type(left).__name__}' and '{type(right).__name__}'"
        ) from None


def _read_hf_sampling(data: Dict[str, Any]) -> Dict[str, Any]:
    """The sampling values as tao-dataservices' HuggingFace server and transformers treat them.

    The server forwards the fields to ``model.generate()`` untouched: a value
    Python cannot compare is a TypeError (500 ``internal_error``), a value
    transformers refuses is a ValueError (400 ``invalid_request``).  Sampling
    happens only when ``temperature > 0``; otherwise ``top_p`` / ``top_k`` are
    never passed on and so never checked.  Checked against nvidia-tao-core 7.3.0
    with transformers 5.x.
    """
    temperature = data.get("temperature", DEFAULT_TEMPERATURE)
    do_sample = _compare(temperature, ">", 0)

    max_tokens = data.get("max_tokens", DEFAULT_MAX_TOKENS[TAO_DATASERVICES])
    if isinstance(max_tokens, bool):
        # The real server takes true/false as 1/0 tokens; the reference keeps refusing
        # a boolean (tests/unit/emulator pins it).
        raise InternalError("'max_tokens' must be an integer, got bool")
    if max_tokens is not None and _compare(max_tokens, "<=", 0):
        raise InvalidRequest(f"`max_new_tokens` must be greater than 0, but is {max_tokens}.")

    penalty = data.get("repetition_penalty", 1.0)
    if penalty is not None and penalty != 1.0 and not (isinstance(penalty, float) and penalty > 0):
        raise InvalidRequest(f"`penalty` has to be a strictly positive float, but is {penalty}")

    if do_sample:
        if temperature != 1.0 and not isinstance(temperature, float):
            raise InvalidRequest(
                f"`temperature` (={temperature}) has to be a strictly positive float, otherwise your next "
                "token scores will be invalid."
            )
        top_k = data.get("top_k", 50)
        if top_k is not None and top_k != 0 and (not isinstance(top_k, int) or top_k <= 0):
            raise InvalidRequest(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        top_p = data.get("top_p", 0.9)
        if top_p is not None and _compare(top_p, "<", 1.0) and float(top_p) < 0:
            raise InvalidRequest(f"`top_p` has to be a float > 0 and < 1, but is {float(top_p)}")

    sampling: Dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if "top_p" in data:
        sampling["top_p"] = data["top_p"]
    return sampling


def _check_requirements(request: ChatRequest, flavor: str) -> None:
    """The flavor-specific checks each real server makes before running its model."""
    if not request.has_user_message:
        raise InvalidRequest("No user message: send at least one message with role 'user'")
    if flavor == COSMOS_RL:
        if not request.media:
            raise InvalidRequest(
                "Cosmos requires 'media': add an image_url or video_url item to the first user message"
            )
    elif flavor == TAO_DATASERVICES:
        if not request.prompt:
            raise InvalidRequest("'prompt' or 'text' parameter is required")
    else:
        if not request.prompt:
            raise InvalidRequest("'prompt' parameter is required")
        wanted = request.sampling.get("inference_type")
        if wanted is not None and wanted not in PREDICT_INFERENCE_TYPES:
            raise InvalidRequest(
                f"Unsupported inference_type {wanted!r}: use one of {', '.join(PREDICT_INFERENCE_TYPES)}"
            )
        if wanted == "image2world" and not request.images:
            raise InvalidRequest("inference_type 'image2world' needs an image_url item")
        if wanted == "video2world" and not request.videos:
            raise InvalidRequest("inference_type 'video2world' needs a video_url item")


def predict_inference_type(request: ChatRequest) -> str:
    """The explicit ``inference_type``, or the one the media present imply."""
    explicit = request.sampling.get("inference_type")
    if explicit:
        return explicit
    if request.videos:
        return "video2world"
    if request.images:
        return "image2world"
    return "text2world"


def answer(flavor: str, request: ChatRequest) -> str:
    """The assistant message content for a valid request (deterministic)."""
    if flavor == COSMOS_PREDICT:
        return "data:video/mp4;base64," + base64.b64encode(fake_video(request)).decode("ascii")
    sampling = request.sampling
    text = (
        f"{BANNER} {flavor} answered '{request.prompt}' with {request.images} image(s), "
        f"{request.videos} video(s); max_tokens={sampling['max_tokens']} "
        f"temperature={sampling['temperature']}"
    )
    if "top_p" in sampling:
        text += f" top_p={sampling['top_p']}"
    if request.system_prompt:
        text += f"; system='{request.system_prompt}'"
    return text


def _box(kind: bytes, payload: bytes) -> bytes:
    """An ISO-BMFF box: 32-bit big-endian size, 4-byte type, payload."""
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def fake_video(request: ChatRequest) -> bytes:
    """A small deterministic byte string shaped like the start of an MP4 file.

    It is not a playable video: an ``ftyp`` box followed by a ``free`` box that
    describes the request in plain text.
    """
    sampling = request.sampling
    description = (
        f"{BANNER} cosmos-predict2.5 {predict_inference_type(request)} "
        f"prompt='{request.prompt}' frames={sampling['max_tokens']} "
        f"guidance={sampling['guidance']} num_steps={sampling['num_steps']} seed={sampling['seed']} "
        f"images={request.images} videos={request.videos}"
    )
    if sampling.get("negative_prompt"):
        description += f" negative_prompt='{sampling['negative_prompt']}'"
    ftyp = _box(b"ftyp", b"isom" + (512).to_bytes(4, "big") + b"isomiso2mp41")
    return ftyp + _box(b"free", description.encode("utf-8"))
