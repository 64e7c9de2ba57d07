"""Model organisms: a misaligned teacher with known ground truth, and its companions."""
