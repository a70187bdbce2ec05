"""Scene requests (JSON in the reference schema), image decoding, input preparation, atomic output."""
