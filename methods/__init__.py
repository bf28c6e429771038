"""KD methods. Every module here registers its method(s) on import; see kdbench.method."""
