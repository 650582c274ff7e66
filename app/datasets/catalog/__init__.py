"""One module per dataset. Each declares a ``Dataset`` (facts, where the files come from, how
they are read) and passes it to ``register_dataset``; every module here is imported on the
first lookup, so a new dataset is one new module (modules named ``_*`` are skipped)."""
