"""Application services shared by several entrypoints (the API and the CLI link accounts the
same way). They orchestrate adapters; entrypoints call them and never each other."""
