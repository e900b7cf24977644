"""Using a trained model: the commands that read a checkpoint."""
