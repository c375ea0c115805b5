"""sweet-hub: SWEET weight templates that materialize Vision Transformers of any size in timm.

``import sweet_hub`` registers the ``sweet_vit`` family in timm (timm has no plugin discovery).
"""

from .config import FORMAT_VERSION, TemplateConfig, format_size, parse_size
from .errors import (
    DiskFullError,
    FitError,
    NotASweetTemplateError,
    SizeError,
    SweetHubError,
    TemplateConfigError,
    TemplateFileError,
    TemplateNotAvailableError,
)
from .export import export_timm
from .template import SweetTemplate
from .timm_models import BUNDLED_TEMPLATE, create_sweet_vit
from .tucker import derive_scalers, materialize_state_dict

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_TEMPLATE",
    "FORMAT_VERSION",
    "DiskFullError",
    "FitError",
    "NotASweetTemplateError",
    "SizeError",
    "SweetHubError",
    "SweetTemplate",
    "TemplateConfig",
    "TemplateConfigError",
    "TemplateFileError",
    "TemplateNotAvailableError",
    "__version__",
    "create_sweet_vit",
    "derive_scalers",
    "export_timm",
    "format_size",
    "materialize_state_dict",
    "parse_size",
]
