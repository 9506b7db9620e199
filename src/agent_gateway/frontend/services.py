"""The services behind the frontend routes (SPEC §6), as one table: where each is configured,
where it is served, how it is reached, and how its health is probed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str  # also its settings' prefix: LETTA_BASE_URL, AMS_BASE_URL
    public_prefix: str
    upstream_prefix: str
    health_path: str
    # Which bodies pass through unread as uploads: multipart on any route (AMS, which the user's own
    # token authorises), or only on a route ending in `upload` (Letta, whose every other body the
    # guard reads and shapes).
    uploads_anywhere: bool


LETTA = ServiceSpec("letta", "/api/v1/letta", "/v1", "/v1/health/", uploads_anywhere=False)
AMS = ServiceSpec("ams", "/api/v1/ams", "", "/health", uploads_anywhere=True)
SERVICES = (LETTA, AMS)
