#!/usr/bin/env bash
# A Debian bookworm base image made from Debian's packages alone, for a machine that reaches
# Debian's mirror but no image registry (CI here). Python is bookworm's 3.11, as in the default
# base python:3.11-slim-bookworm, so the recipe and the torch wheels are the same for both.
#
#   images/local-base.sh [NAME]        default NAME: localhost/qlora-base:bookworm
#   ENGINE=docker images/local-base.sh (default engine: podman)
set -euo pipefail
name=${1:-localhost/qlora-base:bookworm}
engine=${ENGINE:-podman}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# minbase: essential packages and apt only; python3-venv brings the pip wheel the recipe needs.
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$engine" import - "$name"
