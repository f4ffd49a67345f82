"""vermas-runner: the shell around the core that creates and boots towns."""
