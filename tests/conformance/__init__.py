"""Packet-level conformance suite: one set of tests run against every switch target (see README.md)."""
