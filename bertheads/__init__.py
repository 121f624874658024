"""Shared configuration for the bertheads entry points."""
