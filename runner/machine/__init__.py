"""The machine: a probe of what is there, the profile resolved from it, the memory estimate."""
