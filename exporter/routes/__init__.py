"""Thin routers named after their URLs."""
