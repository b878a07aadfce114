"""Typed settings and their layers: defaults, --config, client options, .ghostignore, A/B variants."""
