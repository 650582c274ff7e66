"""One module per architecture family. Each registers its builders (``@architecture(...)``)
when imported; every module here is imported on the first lookup, so a new family is one new
module and a new member of a family is one more name (modules named ``_*`` are skipped)."""
