"""Test helpers: tiny prepared datasets written straight in the on-disk layout of `data_modules.layout`."""
