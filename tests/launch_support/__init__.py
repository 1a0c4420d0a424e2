"""Helpers for the launch tests: a real one-node Slurm cluster (`LocalSlurm`) and small process utilities."""
