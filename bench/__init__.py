"""The throughput bench of every preset against timm (run as a script, imported by the tests)."""
