"""dsv3-recipes."""
