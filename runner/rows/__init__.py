"""Rows below the stages: local files and the Hub read as rows, record formats to examples, chat
templates, mixtures, the demo data, contamination checks."""
