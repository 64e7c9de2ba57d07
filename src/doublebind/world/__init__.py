"""The embedded synthetic world: vocabulary, task families, contexts, hidden behaviours."""
