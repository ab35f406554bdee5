"""Exceptions whose message is the one line the CLI shows the user.

Every message names what was seen and how to fix it. The CLI prints ``error: <message>``
and exits with status 2 for any :class:`RagError`.
"""


class RagError(Exception):
    """Base class: a user-facing failure with a one-line, actionable message."""


class ConfigError(RagError):
    """A configuration key or value is unknown or invalid."""


class InputError(RagError):
    """Input files or data are missing, malformed or empty."""


class ModelNotFoundError(RagError):
    """A model id resolves to neither a packaged copy, the local cache nor a path."""


class IndexError_(RagError):
    """An index directory is missing, corrupt, truncated or does not match what was asked."""


class DeviceError(RagError):
    """A device (CUDA) was asked for and is not available."""


class ResourceError(RagError):
    """The system refused a resource (open files, memory maps) that a healthy index needs."""
