"""The export pipeline: a request's validated query, its rows (cursor, COPY, parallel parts, ADBC), and the bytes."""
