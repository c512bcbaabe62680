"""What csvstore learns from a CSV file: content check, dialect and profile, read-back."""
