"""Models below the stages: a base model loaded as the profile says, and the tiny offline model."""
