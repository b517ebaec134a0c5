"""Experiments over many runs: a sweep's variants, running them, and the comparison report."""
