"""The library core: the frozen-backbone contract, classification plumbing, artifacts."""
