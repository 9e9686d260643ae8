"""Aurora DSQL's limits as named constants, each with where it comes from.

One place for every number so that the emulator (which enforces them) and the magics (which size
batches and explain errors by them) cannot drift. `Lnnnn` is a line of the manual,
``aurora-dsql-user-guide.txt``; "observed" is ``dsql-observed.md``, which wins where they differ.
This module holds data only: no imports from the rest of the package, no behaviour.
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# Transactions (manual "Database limits", L12648-12672; observed "Transactions").
MAX_ROWS_PER_TRANSACTION: Final = 3_000  # table and index rows mutated; 3,001 fails (observed)
MAX_TRANSACTION_BYTES: Final = 10 * MIB  # modified data, checked at COMMIT (observed)
MAX_TRANSACTION_AGE_SECONDS: Final = 300  # "Maximum transaction time 5 minutes"
MAX_QUERY_MEMORY_BYTES: Final = 128 * MIB  # per transaction, 53200

# Keys, rows, columns (L12648-12672).
MAX_KEY_BYTES: Final = 1 * KIB  # primary key or secondary index key, combined
MAX_ROW_BYTES: Final = 2 * MIB
MAX_COLUMN_BYTES: Final = 1 * MIB  # a column that is not part of an index
MAX_KEY_COLUMNS: Final = 8
MAX_TABLE_COLUMNS: Final = 255
MAX_INDEXES_PER_TABLE: Final = 24

# Database objects (L12648-12672).
MAX_SCHEMAS: Final = 10
MAX_TABLES: Final = 1_000
MAX_VIEWS: Final = 5_000
MAX_VIEW_DEFINITION_BYTES: Final = 2 * MIB
MAX_DATABASES: Final = 1

# Connections (cluster quotas, L12632-12642; observed "Connections").
MAX_CONNECTIONS: Final = 10_000
MAX_CONNECTION_RATE_PER_SECOND: Final = 100
MAX_CONNECTION_BURST: Final = 1_000
MAX_CONNECTION_SECONDS: Final = 60 * 60
MAX_PROTOCOL_MESSAGE_BYTES: Final = 10 * MIB  # larger messages close the connection (observed)

# Tokens (L678): SDK default 15 minutes, at most one week.
DEFAULT_TOKEN_TTL_SECONDS: Final = 15 * 60
MAX_TOKEN_TTL_SECONDS: Final = 604_800

# Types (manual type tables, L1228 and around; observed "Column types").
NUMERIC_DEFAULT_PRECISION: Final = 18
NUMERIC_DEFAULT_SCALE: Final = 6
NUMERIC_MAX_PRECISION: Final = 38
NUMERIC_MAX_SCALE: Final = 37
MAX_CHAR_LENGTH_BYTES: Final = 4_096
MAX_VARCHAR_LENGTH_BYTES: Final = 65_535

# Sequences and identity columns (observed): CACHE must be exactly 1 or at least this.
MIN_SEQUENCE_CACHE: Final = 65_536

# Asynchronous jobs (sys.jobs): finished jobs older than this are cleaned up.
JOB_RETENTION_SECONDS: Final = 30 * 60

DEFAULT_PORT: Final = 5432
DEFAULT_DATABASE: Final = "postgres"
DEFAULT_USER: Final = "admin"
