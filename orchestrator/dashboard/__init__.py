"""The effort dashboard: `figures` reads a project's numbers from the database, `page` draws them as one HTML page.
The backend serves the page at /dashboard; `clickmask report` writes it to a folder."""
