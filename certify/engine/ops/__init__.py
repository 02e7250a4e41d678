"""One module per op family; each ends with a module-level ``RULES`` dict."""
