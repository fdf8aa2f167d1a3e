"""mmadapt: measure whether a prompt, retrieval, an adapter or a full fine-tune adapts a model to your domain."""
