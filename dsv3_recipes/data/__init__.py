"""Data tools: preprocessing to .bin/.idx, the offline English corpus, the generated proxy corpus."""
