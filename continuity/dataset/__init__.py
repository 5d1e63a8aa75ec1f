"""Dataset stage: composite sheets, square crops, audit, captions, versioned datasets."""
