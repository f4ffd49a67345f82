"""vermas core library: a town's durable store and the Gas Town concepts built on it.

This package never imports the MCP SDK; `vermas_mcp` is a thin layer over it and
`vermas_runner` is the shell that boots towns.
"""

__version__ = "0.1.0"
