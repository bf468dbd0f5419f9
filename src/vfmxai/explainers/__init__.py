"""Every explanation method behind one interface: `get(name, classifier, **options)(images, targets)`."""

from vfmxai.explainers.base import Explainer, available, get, register

__all__ = ["Explainer", "available", "get", "register"]
