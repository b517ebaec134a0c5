"""Containers: `runner run --image` through the Docker SDK, and what an image is built from."""
