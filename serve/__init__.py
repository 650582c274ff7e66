"""The Ray Serve application (``serve.service:app``), its config, client and Make targets."""
