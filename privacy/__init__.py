"""Privacy: DP accounting and ledger, HE keys and codec.

Imports nothing above it (no Flower, no CLI).
"""
