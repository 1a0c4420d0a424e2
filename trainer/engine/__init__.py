"""The training engine: the LightningModule, optimizer groups, strategies, callbacks, checkpoints, text caches."""
