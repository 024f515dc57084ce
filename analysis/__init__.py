"""Explaining: capture reader, join/attribution, timeline, drops, report model, renderers."""
