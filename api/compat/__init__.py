"""Adapters that speak other products' APIs over roomscribe's own services (one module each)."""
