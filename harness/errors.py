"""Errors a user can fix: printed as one line (what is wrong and how to fix it), exit status 2, no traceback."""


class HarnessError(Exception):
    """Base class: the message is the whole story, shown as `error: <message>`."""


class ConfigError(HarnessError):
    """The configuration cannot work (bad value, impossible combination). Raised before any work starts."""


class AssetError(HarnessError):
    """A model or dataset is not available on this machine (not installed, not cached, hub unreachable)."""
