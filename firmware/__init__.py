"""The command-stream ISA and the host driver (filled in by the back-end issue)."""
