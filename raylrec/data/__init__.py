"""Interaction logs in, processed datasets out: sources, validation, splits, histories."""
