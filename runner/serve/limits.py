"""The body caps the app enforces on every request, and the upload route reads again."""

from __future__ import annotations

MAX_BODY = 1 << 20  # a chat request is kilobytes; a megabyte is already abuse
MAX_UPLOAD = 64 << 20  # /v1/files: training data
