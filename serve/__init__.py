"""The Ray Serve application (``serve.app:app``), its config, client and Make targets."""
