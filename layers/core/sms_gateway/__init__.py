"""The SMS gateway's runtime package: dialects -> logic -> domain, with ports and their AWS adapters."""
