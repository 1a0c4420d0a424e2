"""Everything between raw files and batches: readers, preparation, streaming, the LightningDataModule."""
