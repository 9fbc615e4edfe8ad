"""`sms-gateway chaos`: messages through the local stack with faults injected, and the invariants checked after."""
