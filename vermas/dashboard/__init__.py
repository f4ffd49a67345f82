"""The town dashboard: a typed snapshot of the store (`view`), the actions a person takes from
the page (`actions`), and the Starlette app that serves both live over server-sent events (`web`)."""
