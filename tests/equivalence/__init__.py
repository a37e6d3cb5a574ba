"""Forward equivalence of the built-in methods with the original MedFuse code (see cases.py)."""
