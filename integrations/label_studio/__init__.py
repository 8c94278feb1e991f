"""The Label Studio ML backend protocol: label config, request parsing, response building (no HTTP, no Ray)."""
