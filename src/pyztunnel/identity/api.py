"""Names of the Istio CA API on the wire (reference §4), shared by the server and the client."""

from __future__ import annotations

SERVICE = "istio.v1.auth.IstioCertificateService"
METHOD_NAME = "CreateCertificate"
METHOD = f"/{SERVICE}/{METHOD_NAME}"
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
DEFAULT_PORT = 15012
