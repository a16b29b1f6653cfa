"""Host-side build steps (torch): export, and later quantize; each is path + config in, path out."""
