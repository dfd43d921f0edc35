"""LoRA training: the trainer (this package) and, later, its datasets and job routes."""
