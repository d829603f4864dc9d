"""Where model versions come from: the local repository watcher (and, later, the registry client)."""
