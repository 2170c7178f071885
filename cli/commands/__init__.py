"""One module per ``icmh`` sub-command."""
