"""The HTTP routes, one router per resource: models, completions, adapters (load and unload), specs,
the page and its data, fine-tuning jobs (their checkpoints and progress included), files. app.py
includes them in that order: the OpenAPI document lists paths in the order they were included."""
