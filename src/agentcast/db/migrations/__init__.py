"""Schema migrations of the database backends, one directory per backend."""
