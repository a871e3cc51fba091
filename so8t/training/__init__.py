"""Training: data, SO(8) rotation gates, PET, LoRA, the Trainer run, resume/OOM remedies, VRAM preflight."""
