"""The conformance suite: ``pytest --vit-target TARGET`` (see :mod:`vitspec.pytest_plugin`)."""
