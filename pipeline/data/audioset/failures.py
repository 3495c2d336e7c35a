"""Why a yt-dlp call failed, read from its error messages: permanent reasons (unavailable, private,
removed, age-restricted) are not retried; network errors and anything unknown are."""

from __future__ import annotations

PERMANENT = ("unavailable", "private", "removed", "age_restricted")

# yt-dlp's error messages -> our reasons; first match wins (a removed video is also "unavailable").
_PATTERNS = [
    ("age_restricted", ("confirm your age", "age-restricted", "age restricted", "inappropriate for some users")),
    ("private", ("private video", "video is private")),
    (
        "removed",
        (
            "has been removed",
            "account associated with this video has been terminated",
            "copyright claim",
            "violating youtube",
            "no longer available because",
        ),
    ),
    (
        "unavailable",
        (
            "video unavailable",
            "video is unavailable",
            "not available in your country",
            "is not available",
            "requested format is not available",
            "does not exist",
        ),
    ),
    (
        "network",
        (
            "failed to resolve",
            "name or service not known",
            "temporary failure in name resolution",
            "nodename nor servname",
            "network is unreachable",
            "no route to host",
            "connection refused",
            "getaddrinfo failed",
            "no address associated",
        ),
    ),
]


def classify(stderr: str) -> tuple[str, str]:
    """(reason, the message line) for a failed yt-dlp call; unknown failures are `transient`."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    message = next((l for l in reversed(lines) if l.startswith("ERROR")), lines[-1] if lines else "no message")
    text = " ".join(lines).lower()
    for reason, needles in _PATTERNS:
        if any(n in text for n in needles):
            return reason, message[:300]
    return "transient", message[:300]
