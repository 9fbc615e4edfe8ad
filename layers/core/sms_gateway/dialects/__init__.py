"""HTTP contracts: each client dialect translates its wire format to the canonical commands and back."""
