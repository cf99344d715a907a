"""LLM recommenders on one interface.

``raylrec.methods.config`` holds the registry (``METHODS``) and the base config every method's
config class extends; ``raylrec.methods.base.RecMethod`` is the model interface. Each method is
a folder here (``tallrec/``, ``collm/``, ``reclora/``, ...): its torch-free config and
registration in ``__init__.py``, its model in ``model.py``. Importing this package imports no
torch: configs load and fail fast.
"""

from __future__ import annotations

from raylrec.methods.config import (
    METHODS,
    MethodConfig,
    Stage,
    prompt_templates,
    register_method,
    template_text,
)

__all__ = ["METHODS", "MethodConfig", "Stage", "prompt_templates", "register_method", "template_text"]
