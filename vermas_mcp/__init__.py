"""The MCP layer over the vermas core: each tool validates, calls the core and shapes
the result. Nothing here owns state or policy."""
