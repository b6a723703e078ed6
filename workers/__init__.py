"""Per-clip CPU work: decode, audio features, landmarks, 3DMM fit, parsing. Never imports ray."""
