"""Who is calling: an API key or an OIDC bearer token, and the tenant it names.

Both arrive as `Authorization: Bearer <credential>`: a `cvk_` value is an API key (checked against
the key file's hashes), anything else a JWT from the configured OIDC issuer (signature from its
JWKS, issuer, audience and expiry checked by PyJWT). The tenant always comes from the credential,
never from the request body. A missing or bad credential is 401 with the same answer whatever was
wrong, so an answer never tells which part of a guess was right.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor import metrics
from conveyor.credentials import PREFIX, TENANT_PATTERN, KeyRing
from conveyor.gateway.admission import TenantRate
from conveyor.gateway.answers import encoded_headers, send_json
from conveyor.gateway.oidc import OidcVerifier
from conveyor.settings import Settings

log = logging.getLogger(__name__)

MAX_CREDENTIAL_CHARS = 8192
_TENANT = re.compile(TENANT_PATTERN)
UNAUTHORIZED = "a valid API key or bearer token is required (Authorization: Bearer ...)"


@dataclass(frozen=True)
class Principal:
    tenant: str
    subject: str  # the API key's id or the token's `sub`, for logs


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.keys = KeyRing(settings.resolved_api_keys_file())
        self.oidc = OidcVerifier(settings) if settings.oidc_issuer else None
        self.tenant_claim = settings.oidc_tenant_claim
        if not len(self.keys) and self.oidc is None:
            log.warning("no API keys in %s and no OIDC issuer: every request will be refused "
                        "(create a key with `conveyor keys create --tenant NAME`)", self.keys.path)

    async def principal(self, authorization: str | None) -> Principal | None:
        """The caller, or None when the credential is missing or not valid."""
        if not authorization or len(authorization) > MAX_CREDENTIAL_CHARS:
            return None
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return None
        if credential.startswith(PREFIX):
            entry = self.keys.verify(credential)
            if entry is not None:
                return Principal(tenant=entry.tenant, subject=entry.id)
        elif self.oidc is not None:
            claims = await self.oidc.claims(credential)
            tenant = claims.get(self.tenant_claim) if claims else None
            if isinstance(tenant, str) and _TENANT.match(tenant):
                return Principal(tenant=tenant, subject=str(claims.get("sub", ""))[:200])
        return None


class Authenticate:
    """ASGI middleware: every path but `open_paths` needs a valid credential (401), then passes the
    tenant's rate limit (429); the caller lands in the request state as `principal`. It runs before
    routing and body parsing, so nothing of an unauthenticated request is read."""

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, rate: TenantRate, open_paths: set[str]) -> None:
        self.app, self.authenticator, self.rate, self.open_paths = app, authenticator, rate, open_paths
        self.unauthenticated = metrics.HTTP_REFUSED.labels("unauthenticated")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        principal = await self.authenticator.principal(authorization)
        if principal is None:
            self.unauthenticated.inc()
            return await send_json(send, 401, {"detail": UNAUTHORIZED}, [(b"www-authenticate", b"Bearer")])
        try:
            self.rate.take(principal.tenant)
        except HTTPException as refused:
            return await send_json(send, refused.status_code, {"detail": refused.detail},
                                   encoded_headers(refused.headers))
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="An API key (`cvk_...`) or an OIDC access token.")


async def caller(request: Request, _: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
    """The authenticated caller (the middleware checked the credential; declaring the bearer
    scheme here puts it in the OpenAPI document)."""
    return request.state.principal
