"""Models: whole recommenders (one file each) built from layers in ``models.layers``.

Every model registers itself with :func:`register_model` and is built with
:func:`build_model` (``--model NAME`` on the command line).
"""

from elasticrec.models.base import SequentialRecommender, build_model, list_models, register_model

# import for registration side effects
from elasticrec.models import elastic, hstu, linrec, sasrec  # noqa: F401,E402


__all__ = ["SequentialRecommender", "build_model", "list_models", "register_model"]
