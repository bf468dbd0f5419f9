"""Every explanation method behind one interface: `get(name, classifier, **options)(images, targets)`.

Importing this package registers every method (each module registers its classes on import).
"""

from vfmxai.explainers import ala, attention, cam, daam, gradient, lrp, perturbation  # noqa: F401
from vfmxai.explainers.base import (
    Explainer,
    available,
    check_options,
    default_options,
    display_name,
    get,
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
    "register",
    "unit_range",
    "uses_target",
]
