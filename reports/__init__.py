"""Run reports: privacy-budget and results views built from a run folder."""
