"""The library side of the classifier service: everything serve/service.py wires into Ray Serve,
importable and testable without a cluster.

- settings.py     what each deployment's user_config (and the MODEL_* environment) may say
- source.py       which registered model the settings mean, through app.tracking
- served_model.py one loaded model: validation at load, results, public and internal details
- holder.py       ModelHolder: the served model, swapped on a new version, kept on a failure
- shaped.py       decode for the served input shape, again when a swap changed it
- bodies.py       bounded request bodies: raw bytes or multipart files
- errors.py       JSON error bodies and the FastAPI exception handlers
- schemas.py      the HTTP response models and OpenAPI request descriptions
- telemetry.py    Prometheus metrics through Ray's metrics agent
"""
