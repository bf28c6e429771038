"""KD methods. Every module here registers its method(s) on import; see kdbench.method.

Modules load in LOAD_ORDER first (the MiniLLM paper's order: baselines, MiniLLM and its ablations,
then the other objectives), then any other module alphabetically. Registration order is the order
every report lists and colours methods in, so a new method file appears after these without an edit.
"""
LOAD_ORDER = ["sft", "kd", "seqkd", "minillm", "single_step", "ranking", "js", "tvd", "gkd", "distillm"]
