"""What turns a checkpoint into outputs: export, predictions."""
