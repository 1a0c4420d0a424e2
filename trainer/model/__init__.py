"""Model parts: plain nn.Modules (encoders, fusion heads, towers, objectives) that know nothing of ranks."""
