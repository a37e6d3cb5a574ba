"""Task definitions (labels, EHR window, CXR pairing window) registered as plugins."""
