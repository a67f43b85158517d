"""The recipe floor: the Recipe data model, model sizes, GPU and image facts, the pipeline layout,
parallel sizes and checkpoint facts. Standard library and fiddle only."""
