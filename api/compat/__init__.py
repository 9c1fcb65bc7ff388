"""Adapters that speak other transcription APIs over roomscribe's own services."""
