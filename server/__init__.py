"""The ServerApp, its strategies, and the pure aggregation math they use."""
