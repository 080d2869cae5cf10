"""Teacher side: self-edit prompts, generation backends and the ReST^EM update (not yet built)."""
