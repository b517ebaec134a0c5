"""The spec: safe YAML, the JSON Schema, cross-field rules, frozen dataclasses; `--set` paths, the
row preview `validate` makes, the extras a spec needs."""
