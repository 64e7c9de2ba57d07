"""Studies: a grid of techniques x seeds on one organism, resumable, with verdicts."""
