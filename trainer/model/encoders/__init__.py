"""Source encoders: each maps user or item ids (plus a context dict) to one vector per id."""
