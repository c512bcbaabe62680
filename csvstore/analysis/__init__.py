"""What csvstore learns from a CSV file: content check, dialect and profile, read-back."""

import csv
from typing import Final

# read_page bounds bytes, not fields; raised at import for every csv.reader (the sniffer's).
READ_FIELD_LIMIT: Final = 16 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), READ_FIELD_LIMIT))
