"""Error types the user sees.

Every check of user input raises :class:`InputError` with a message that names the input
and says what is wrong, so the GUI, the CLI and batch reports can show it as is instead of
a traceback from deep inside numpy or torch.
"""

from __future__ import annotations


class TACEResponseError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(TACEResponseError, ValueError):
    """An input (file, volume, segment, manifest row, clinical value, ...) is unusable.

    The message always names the input and states what is wrong with it.
    """


class BundleError(TACEResponseError):
    """A model bundle is missing, corrupt, or does not match its checksum or card."""


class CancelledError(TACEResponseError):
    """Work stopped because the user asked for it."""
