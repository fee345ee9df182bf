"""Template tags of the releases app."""
