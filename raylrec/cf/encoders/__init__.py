"""The CF encoders: one folder each (config and registration in ``__init__.py``, the module in
``model.py``), found by ``raylrec.cf.config.ENCODERS``."""
