"""A valid spec in one line: what `runner validate` prints and the server's /v1/specs/validate says."""

from __future__ import annotations

from runner.spec.typed import Spec


def valid_line(source: object, spec: Spec) -> str:
    """What `validate` prints for a valid spec (the server's /v1/specs/validate says the same)."""
    # `data.train` written as a list is a mixture (runner.rows.mixture.is_mixture, a layer up).
    what = (f"a mixture of {len(spec.data.train)} sources" if isinstance(spec.data.train, tuple)
            else f"{spec.data.format} data")
    return f"{source}: valid ({spec.name}: {spec.model.source} model, {what}, {len(spec.eval.benchmarks)} benchmark(s))"
