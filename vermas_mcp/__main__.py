from vermas_mcp.cli import main

main()
