"""A/B evaluation of two GGUF models: quality, safety, performance statistics and the non-inferiority verdict."""
