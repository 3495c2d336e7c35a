"""Training (stages train and teacher): the model, augmentation, the data loader and the training loop."""
