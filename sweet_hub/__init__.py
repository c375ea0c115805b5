"""sweet-hub: SWEET weight templates that materialize Vision Transformers of any size in timm.

``import sweet_hub`` registers the ``sweet_vit`` family in timm (timm has no plugin discovery).
"""

from .config import FORMAT_VERSION, TemplateConfig
from .errors import (
    NotASweetTemplateError,
    SizeError,
    SweetHubError,
    TemplateConfigError,
    TemplateFileError,
    TemplateNotAvailableError,
)
from .export import export_timm
from .template import SweetTemplate, derive_scalers, materialize_state_dict
from .timm_models import BUNDLED_TEMPLATE, create_sweet_vit

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_TEMPLATE",
    "FORMAT_VERSION",
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
    "materialize_state_dict",
]
