"""The witness patrol: per rig, pure decisions from agents' evidence to typed actions."""
