"""The deployment's refusal: an install, rollback or status request that cannot go ahead, with nothing
under the root changed. Its own module so every deploy module can raise it without import cycles."""

from __future__ import annotations

from edgesdk.errors import EdgesdkError


class InstallError(EdgesdkError):
    """An install, rollback or status request was refused; nothing under the root changed."""
