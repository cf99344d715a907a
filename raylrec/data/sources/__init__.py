"""Sources of interaction logs, one module each (registered in ``raylrec.data.config.SOURCES``).

A source's config class names its loader (``loader``: ``"module:function"``), which turns the
configured files into one Ray Dataset of raw events with canonical columns (``user_id``,
``item_id``, ``timestamp``, ``rating`` and/or ``label``, ``_file``, ``_row``) plus small
metadata tables (``raylrec.data.loaded.LoadedSource``). A new source is a new module here (or a
``raylrec.sources`` entry point): its config class, ``@register_source``, and its loader.
"""
