"""The web pages for analysts: page routes, templates and static files."""
