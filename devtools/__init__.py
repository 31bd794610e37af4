"""Developer tools that are not part of the mailish package (not shipped in the wheel)."""
