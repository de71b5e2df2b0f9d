"""TACEResponse computation library (no Slicer import)."""
