"""Every explanation method behind one interface: `get(name, classifier, **options)(images, targets)`.

Importing this package registers every method (each module registers its classes on import).
"""

from vfmxai.explainers import (  # noqa: F401
    ala,
    attention,
    attention_vit,
    cam,
    daam,
    gradient,
    lrp,
    perturbation,
    token_masks,
)
from vfmxai.explainers.base import (
    Explainer,
    available,
    check_options,
    default_options,
    display_name,
    get,
    inapplicable,
    register,
    unit_range,
    uses_target,
)

__all__ = [
    "Explainer",
    "available",
    "check_options",
    "default_options",
    "display_name",
    "get",
    "inapplicable",
    "register",
    "unit_range",
    "uses_target",
]
