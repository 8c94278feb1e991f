"""Authorization headers for Label Studio's API from LABEL_STUDIO_API_KEY.

The key is normally a personal access token (a long-lived JWT refresh token). Label Studio 1.23.2 does not accept
it directly: it is exchanged at POST /api/token/refresh/ {"refresh": key} for an access token that lasts about five
minutes, sent as "Authorization: Bearer <access>". The access token is renewed shortly before its `exp` claim, or
when the caller reports a 401 (invalidate()). A key that is not a JWT, or that the exchange refuses, is tried as a
legacy token ("Authorization: Token <key>"), which Label Studio accepts only when legacy tokens are enabled.
"""
from __future__ import annotations

import base64
import binascii
import json
import threading
import time

import requests

RENEW_BEFORE_S = 60.0  # renew this long before expiry, so a slow image download never starts with a stale token
DEFAULT_LIFETIME_S = 300.0  # Label Studio's access token lifetime, used when a token carries no exp claim


class LabelStudioAuthError(RuntimeError):
    """Label Studio could not be reached for the token exchange; the message carries no credential."""


def jwt_claims(token: str) -> dict | None:
    """The claims of a JWT, unverified (only used to schedule renewal), or None if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioAuth:
    def __init__(self, base_url: str, api_key: str, session: requests.Session, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.session, self.timeout_s = session, timeout_s
        self.legacy = jwt_claims(api_key) is None
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()  # one exchange at a time, however many requests need a token

    def __repr__(self) -> str:
        return f"LabelStudioAuth({self.base_url!r}, legacy={self.legacy})"

    def headers(self) -> dict[str, str]:
        if self.legacy:
            return {"Authorization": f"Token {self._key}"}
        with self._lock:
            if self._access is None or time.time() > self._expires - RENEW_BEFORE_S:
                self._exchange()
            if self.legacy:
                return {"Authorization": f"Token {self._key}"}
            return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self) -> None:
        """Forget the access token (after a 401): the next headers() exchanges the key again."""
        with self._lock:
            self._access = None

    def _exchange(self) -> None:
        try:
            response = self.session.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self._key},
                                         timeout=self.timeout_s, allow_redirects=False)
        except requests.RequestException as exc:
            raise LabelStudioAuthError(f"Label Studio token exchange failed ({type(exc).__name__})") from None
        access = None
        if response.status_code == 200:
            try:
                access = response.json().get("access")
            except (ValueError, AttributeError):
                access = None
        if not isinstance(access, str) or not access:
            if 400 <= response.status_code < 500:
                self.legacy = True  # Label Studio says this is no refresh token: try it as a legacy token
                return
            raise LabelStudioAuthError(f"Label Studio token exchange answered HTTP {response.status_code}")
        claims = jwt_claims(access) or {}
        exp, iat = claims.get("exp"), claims.get("iat")
        lifetime = DEFAULT_LIFETIME_S
        if isinstance(exp, (int, float)) and isinstance(iat, (int, float)) and exp > iat:
            lifetime = float(exp - iat)  # the token's own lifetime, counted on this clock (the two may differ)
        self._access = access
        self._expires = time.time() + lifetime
