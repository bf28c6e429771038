"""Task adapters. Every module here registers its task(s) on import; see kdbench.task."""
