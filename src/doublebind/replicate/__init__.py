"""Published results rerun inside the project (`doublebind replicate ...`)."""
