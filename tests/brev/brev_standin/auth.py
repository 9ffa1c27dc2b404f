"""The login state, as the real CLI keeps it: ``<home>/.brev/credentials.json`` (pkg/store/authtoken.go).

The file holds the CLI's ``entity.AuthTokens`` as Go's ``json.MarshalIndent(v, "", " ")`` writes them. A command
that needs the API takes a fresh access token from it as ``auth.GetFreshAccessTokenOrNil`` does: an API key as it
is; an access token that is a JWT still valid (``isAccessTokenValid``); else the refresh token is exchanged for a
new access token (the KAS authenticator) and the pair is written back. The stand-in's "server" accepts every
refresh token except those starting with ``TAO_BREV_REJECT_TOKEN_PREFIX`` and the CLI's own ``auto-login``
placeholder (what an expired JWT login leaves); new access tokens are unsigned JWTs of the KAS issuer, one hour long.
"""

import base64
import json
import os
import time

PLACEHOLDER = "auto-login"
KAS_ISSUER = "https://login.nvidia.com"
AUTH0_ISSUER = "https://brevdev.us.auth0.com/"
SIGNING_METHODS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
                   "PS384", "PS512", "EdDSA", "none"}
FIELDS = ("access_token", "refresh_token", "api_key", "api_key_org_id")  # the last two are omitempty


class CredentialsError(Exception):
    """The credentials file cannot be read (the real CLI fails the command with the decoder's message)."""


def path(settings, name="credentials.json"):
    """A file of the CLI's folder in the stand-in's home (the real CLI: ``$HOME/.brev``)."""
    return os.path.join(settings.home, ".brev", name)


def _unpadded(segment):
    if "=" in segment or len(segment) % 4 == 1:
        raise ValueError("bad base64url segment")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def claims_of(token):
    """The claims of ``token`` read without verification (jwt.Parser.ParseUnverified), or None."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    try:
        header = json.loads(_unpadded(pieces[0]))
        claims = json.loads(_unpadded(pieces[1]))
    except ValueError:
        return None
    if header is not None and not isinstance(header, dict) or claims is not None and not isinstance(claims, dict):
        return None
    alg = (header or {}).get("alg")
    return (claims or {}) if isinstance(alg, str) and alg in SIGNING_METHODS else None


def is_access_token_valid(token, now=None):
    """auth.isAccessTokenValid: a JWT whose exp, nbf and iat (when set) hold now."""
    claims = claims_of(token)
    if claims is None:
        return False
    now = int(time.time() if now is None else now)
    bounds = {"exp": lambda t: now < t, "nbf": lambda t: now >= t, "iat": lambda t: now >= t}
    for claim, ok in bounds.items():
        value = claims.get(claim, 0)
        if type(value) not in (int, float):
            return False
        if value and not ok(int(value // 1)):
            return False
    return True


def go_json(tokens):
    """entity.AuthTokens through json.MarshalIndent(v, "", " "): no newline at the end."""
    lines = []
    for field in FIELDS:
        value = tokens.get(field) or ""
        if value or field in FIELDS[:2]:
            text = json.dumps(value, ensure_ascii=False)
            for char in "<>&\u2028\u2029":
                text = text.replace(char, "\\u%04x" % ord(char))
            lines.append(' "%s": %s' % (field, text))
    return "{\n" + ",\n".join(lines) + "\n}"


def overwrite(target, text):
    """files.OverwriteJSON: make the folder (0770 less the umask), create or truncate the file (a new one 0666
    less the umask; an existing one keeps its mode), write."""
    os.makedirs(os.path.dirname(target), mode=0o770, exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text)


def save(settings, tokens):
    """store.SaveAuthTokens."""
    overwrite(path(settings), go_json(tokens))


def load(settings):
    """store.GetAuthTokens: the tokens, or None when there is no credentials file."""
    try:
        with open(path(settings), encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    try:
        tokens = json.loads(text)
    except ValueError as exc:
        raise CredentialsError("invalid credentials file %s: %s" % (path(settings), exc)) from None
    if not isinstance(tokens, dict):
        raise CredentialsError("json: cannot unmarshal into Go value of type entity.AuthTokens")
    return dict((field, tokens.get(field) if isinstance(tokens.get(field), str) else "") for field in FIELDS)


def unplaced_access_token(settings):
    """What auth.StandardLogin prints on stdout at the start of every command: an access token neither
    authenticator recognises by its issuer (e.g. the ``auto-login`` placeholder a token login writes)."""
    try:
        tokens = load(settings)
    except CredentialsError:
        return False
    if not tokens or not tokens["access_token"] or tokens["api_key"]:
        return False
    claims = claims_of(tokens["access_token"]) or {}
    return claims.get("iss") not in (KAS_ISSUER, AUTH0_ISSUER)


def new_access_token(now):
    """An access token of the stand-in's KAS: an unsigned JWT valid for an hour."""
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode().rstrip("=")
    now = int(now)
    return "%s.%s." % (part({"alg": "none", "typ": "JWT"}),
                       part({"iss": KAS_ISSUER, "sub": "user-tao-test", "iat": now, "exp": now + 3600}))


def fresh_access_token(settings, say, now=None):
    """auth.GetFreshAccessTokenOrNil: a usable token, or "" (logged out). ``say`` prints on stdout."""
    now = time.time() if now is None else now
    tokens = load(settings)
    if not tokens or not (tokens["access_token"] or tokens["refresh_token"] or tokens["api_key"]):
        return ""
    if tokens["api_key"].strip():
        return tokens["api_key"].strip()
    if is_access_token_valid(tokens["access_token"], now):
        return tokens["access_token"]
    refresh = tokens["refresh_token"]
    if not refresh:
        return ""
    if refresh == PLACEHOLDER:  # KasAuthenticator: a refresh token that is no <session>:<device> pair
        overwrite(path(settings, ".invalid-refresh-token"), refresh)
        os.chmod(path(settings, ".invalid-refresh-token"), 0o600)
        say("WARN: malformed refresh token, logging out\n")
        return ""
    if settings.reject_prefix and refresh.startswith(settings.reject_prefix):
        return ""  # the API answered UNAUTHORIZED: nil tokens, logged out
    fresh = {"access_token": new_access_token(now), "refresh_token": refresh}
    save(settings, fresh)
    return fresh["access_token"]


def login_with_token(settings, token, now=None):
    """auth.LoginWithToken: a JWT valid now is the access token, anything else the refresh token."""
    if is_access_token_valid(token, now):
        save(settings, {"access_token": token, "refresh_token": PLACEHOLDER})
    else:
        save(settings, {"access_token": PLACEHOLDER, "refresh_token": token})


def login_with_api_key(settings, api_key, org_id):
    """auth.LoginWithAPIKey: the key and its org join the tokens already saved."""
    try:
        tokens = load(settings) or {}
    except CredentialsError:
        tokens = {}
    tokens.update(api_key=api_key, api_key_org_id=org_id)
    save(settings, tokens)


def api_key_login(settings):
    """auth.IsAPIKeyAuthStore."""
    try:
        tokens = load(settings)
    except CredentialsError:
        return False
    return bool(tokens and tokens["api_key"].strip().startswith("bak-"))


def logout(settings):
    """auth.Logout: remove the credentials file (a missing one is fine)."""
    try:
        os.unlink(path(settings))
    except FileNotFoundError:
        pass
