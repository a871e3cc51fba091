"""Export: bake-in (rotations folded into o_proj), GGUF conversion, quantization, fidelity checks."""
