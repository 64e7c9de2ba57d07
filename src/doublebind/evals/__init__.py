"""Evals: capability, misbehaviour and confession, scored teacher-forced where possible."""
