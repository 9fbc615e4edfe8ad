"""Use cases. They depend on ports and the domain, never on boto3 or httpx."""
