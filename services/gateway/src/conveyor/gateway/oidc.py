"""OIDC bearer tokens: JWTs verified against the issuer's published signing keys (JWKS).

PyJWT checks the signature (only the configured algorithms, so never `none` or an HMAC key
confusion), the issuer, the audience and the expiry. The JWKS is fetched with httpx, kept five
minutes, and fetched again early (at most every 30 s) when a token names a key id not in it, which
is how issuers roll their keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

from conveyor.settings import Settings

log = logging.getLogger(__name__)

JWKS_CACHE_SECONDS = 300.0
JWKS_REFRESH_MIN_SECONDS = 30.0


class OidcVerifier:
    """Verifies bearer JWTs; the issuer's signing keys are fetched over HTTP and cached."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_audience  # the settings require both together
        self.issuer, self.audience = settings.oidc_issuer, settings.oidc_audience
        self.jwks_url = settings.oidc_jwks_url or f"{self.issuer.rstrip('/')}/.well-known/jwks.json"
        self.algorithms = settings.oidc_algorithms
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._fetching: asyncio.Lock = asyncio.Lock()

    async def claims(self, token: str) -> dict[str, Any] | None:
        """The token's claims when it is valid (signature, issuer, audience, expiry); None otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            key = await self._key(header.get("kid"))
            if key is None:
                return None
            claims = jwt.decode(token, key=key.key, algorithms=self.algorithms, audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "iss", "aud"]}, leeway=30)
        except (jwt.PyJWTError, httpx.HTTPError, ValueError) as exc:
            log.debug("bearer token refused: %s", type(exc).__name__)
            return None
        return claims

    async def _key(self, key_id: object) -> jwt.PyJWK | None:
        since = time.monotonic() - self._fetched_at
        if since >= JWKS_CACHE_SECONDS or (since >= JWKS_REFRESH_MIN_SECONDS and key_id not in self._keys):
            async with self._fetching:
                if time.monotonic() - self._fetched_at >= JWKS_REFRESH_MIN_SECONDS:  # nobody fetched meanwhile
                    await self._fetch()
        if key_id is None and len(self._keys) == 1:  # a token without `kid` from a one-key issuer
            return next(iter(self._keys.values()))
        return self._keys.get(key_id) if isinstance(key_id, str) else None

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()  # also on failure: an issuer that is down is not hammered
        try:
            async with httpx.AsyncClient(timeout=5, follow_redirects=False) as client:
                response = await client.get(self.jwks_url)
                response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, jwt.PyJWTError, ValueError) as exc:
            log.warning("cannot fetch the OIDC signing keys from %s: %s", self.jwks_url, type(exc).__name__)
            return
        self._keys = {key.key_id or "": key for key in keys}
