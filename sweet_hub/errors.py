"""Exceptions raised by sweet-hub.

Every error a user can trigger with bad input is one of these, with a message that names the
problem and the fix. They subclass the built-in type a caller would naturally catch
(``ValueError`` for bad arguments, ``FileNotFoundError`` for missing files, ...), so code written
against timm or huggingface_hub keeps working.
"""

from __future__ import annotations

__all__ = [
    "DiskFullError",
    "FitError",
    "NotASweetTemplateError",
    "SizeError",
    "SweetHubError",
    "TemplateConfigError",
    "TemplateFileError",
    "TemplateNotAvailableError",
]


class SweetHubError(Exception):
    """Base class of all sweet-hub errors."""


class SizeError(SweetHubError, ValueError):
    """A requested (depth, width) cannot be built from a template."""


class TemplateConfigError(SweetHubError, ValueError):
    """A template config (``config.json`` or constructor arguments) is missing or wrong."""


class TemplateFileError(SweetHubError, ValueError):
    """A template or scaler file is truncated, corrupted, or does not match its config."""


class NotASweetTemplateError(SweetHubError, ValueError):
    """A repository or folder exists but does not hold a SWEET template."""


class TemplateNotAvailableError(SweetHubError, FileNotFoundError):
    """A template cannot be found locally and cannot be downloaded (offline, missing, private)."""


class DiskFullError(SweetHubError, OSError):
    """A file could not be written: no space left (or quota exceeded) where it was going."""


class FitError(SweetHubError, ValueError):
    """A checkpoint cannot be fitted by a template (an architecture the Tucker form cannot hold)."""
