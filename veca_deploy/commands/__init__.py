"""One module per CLI command; each exposes a click command (``command`` or the command's name)."""
