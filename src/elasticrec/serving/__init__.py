"""Serving: top-k recommendations from a trained run (Python API, CLI, HTTP service).

``rec = load_run("runs/my-run")`` then ``rec.recommend([["12", "7"]], k=10)`` or
``rec.recommend_user("42")``; ``elasticrec recommend`` / ``elasticrec serve`` on the command
line; :func:`elasticrec.serving.app.create_app` builds the FastAPI service (needs the ``serve``
extra). See docs/serving.md.
"""

from elasticrec.serving.recommender import (
    MAX_K, Recommendation, Recommender, RunLoadError, ServingError, UnknownItemError,
    UnknownUserError, load_run)

__all__ = ["MAX_K", "Recommendation", "Recommender", "RunLoadError", "ServingError",
           "UnknownItemError", "UnknownUserError", "load_run"]
