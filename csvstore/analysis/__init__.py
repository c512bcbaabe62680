"""What csvstore learns from a CSV file: content check, dialect and profile, read-back."""

import csv
from typing import Final

# csv.reader refuses a field over csv.field_size_limit() (131,072 characters by default);
# read_page bounds the bytes it reads instead, so a field may be as long as that bound. Set
# once, when the package is imported, so that every csv.reader (the sniffer's too) sees it.
READ_FIELD_LIMIT: Final = 16 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), READ_FIELD_LIMIT))
