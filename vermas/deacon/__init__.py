"""The deacon patrol: town-wide, pure decisions that keep the coordinators alive and escalations heard."""
