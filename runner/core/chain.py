"""Chaining (`train.init_adapter: {spec: other.yaml}`): a spec whose training starts from another
spec's adapter. The other spec's stages up to train are planned and run first, as that spec alone
would run them (its own profile, the same store, so they are shared with every spec and sweep
variant that chains it); its adapter folder then stands in the spec as `init_adapter.path`, and the
adapter's file digests enter this train key like any local file's.

Light: `plan` resolves chains without importing torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from runner.core.errors import SpecError
from runner.machine.profile import Profile
from runner.spec.typed import Spec

MAX_LINKS = 8  # a chain longer than this is a loop or a mistake


def chained_spec(spec: Spec) -> tuple[Spec, Path] | None:
    """The spec whose adapter this one starts from, and its file; None when it names none (or the
    adapter is already resolved to a folder). A chain that loops back is refused in one line."""
    from runner.spec.typed import load_spec

    start = spec.train.init_adapter
    if start is None or start.spec is None or start.path is not None:
        return None
    path = spec.resolve(start.spec)
    seen, current = [path], load_spec(path)
    link = current
    while current.train.init_adapter is not None and current.train.init_adapter.spec is not None:
        nxt = current.resolve(current.train.init_adapter.spec)
        if nxt in seen or len(seen) >= MAX_LINKS:
            names = " -> ".join(p.name for p in [*seen, nxt])
            raise SpecError([f"train.init_adapter.spec: the chain {names} loops back or runs past {MAX_LINKS} "
                             "specs: start one of them from fresh adapters"])
        seen.append(nxt)
        current = load_spec(nxt)
    return link, path


def link_profile(spec: Spec) -> Profile:
    """The chained spec's profile on this machine, as `runner run` of that spec alone resolves it."""
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile

    return resolve_profile(spec, probe_machine())


def with_adapter(spec: Spec, train_artifact: Path) -> Spec:
    """The spec with its starting adapter resolved to the chained spec's train artifact."""
    start = spec.train.init_adapter
    assert start is not None
    resolved = replace(start, path=str(train_artifact / "adapter"))
    return replace(spec, train=replace(spec.train, init_adapter=resolved))


def waiting_reason(link_path: Path) -> str:
    return f"after {link_path.name}'s train (train.init_adapter)"
