"""LoRA adapters: the model's LoRA targets, PEFT loading and validation, dummy adapters, the
name -> version registry with its host cache, and the GPU pool."""
