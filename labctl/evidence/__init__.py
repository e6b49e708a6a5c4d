"""Evidence on every failure (`labctl grade/test --evidence DIR`): what proves each failed check, kept."""
