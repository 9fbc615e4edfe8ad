"""Adapters: the AWS and HTTP implementations of the ports."""
