"""Student side: edit -> training sequences, LoRA adaptation, batched answering, graders."""
