"""Sending bytes: files, file chunks, ranges, streamed responses, and the relay."""
