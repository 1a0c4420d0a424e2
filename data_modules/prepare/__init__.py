"""`fusionrec data prepare`: validate -> clean -> filter -> index -> split -> tokenize -> write shards + manifest."""
