"""CLI commands: each module here registers its commands on ``lab.cli.app`` when imported."""
