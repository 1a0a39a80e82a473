"""The `fedsim` command line: one module per command; no training or crypto here."""
