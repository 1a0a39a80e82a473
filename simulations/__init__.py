"""Build a federation from a RunConfig and run it on Flower's Ray simulation engine."""
