"""Tenants and Secret Tokens."""
