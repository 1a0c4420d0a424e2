"""Everything that learns: encoders, fusion, losses, metrics, the LightningModule, strategies, the command line."""
