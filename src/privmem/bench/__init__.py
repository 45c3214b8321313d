"""Benchmarks: they print figures and write JSON; none of them is a test."""
