"""A user's own package, outside valleys: three model families and their data, for the command-line tests."""
