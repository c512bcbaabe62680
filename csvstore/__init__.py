"""csvstore: an HTTP service that stores CSV files grouped by client-chosen sessions."""

__version__ = "0.1.0"
