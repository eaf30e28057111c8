"""Interference analysis (paper Section 3): gradient conflict, per-language Hard Concrete masks, report."""
