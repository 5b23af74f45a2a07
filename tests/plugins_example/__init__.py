"""Plugins written as a third party would write them (see tiny_plugins.py and docs/extending.md)."""
