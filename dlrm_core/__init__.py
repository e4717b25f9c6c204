"""Pure PyTorch/NumPy core of LiveUpdate: model, LiveEmbedding, rank control, trainer, readers."""
