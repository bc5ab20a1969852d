"""The conformance suite: ``pytest --vit-target TARGET`` (see :mod:`conformance.plugin`)."""
