"""Persistent cache of paid judge calls (SQLite), keyed by judge model, prompt version and prompt."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

@dataclass
class CachedJudgment:
    reply: str
    scores: tuple[float, float]


class JudgeCache:
    """Persistent cache of judge calls in one SQLite file.

    One row per successful call, committed in its own transaction as soon as the call returns, so
    a crash loses nothing already paid for. Unparsable replies are not stored: a rerun may get a
    usable one. One connection guarded by a lock serves all worker threads.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self.hits = 0
        self.misses = 0
        with self._lock, self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS judgments ("
                " key TEXT PRIMARY KEY, judge_model TEXT NOT NULL, prompt_version TEXT NOT NULL,"
                " reply TEXT NOT NULL, score_1 REAL NOT NULL, score_2 REAL NOT NULL, created_at REAL NOT NULL)"
            )

    @staticmethod
    def key(judge_model: str, prompt_version: str, text: str) -> str:
        # JSON list: unambiguous boundaries between the three parts.
        blob = json.dumps([judge_model, prompt_version, text], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Optional[CachedJudgment]:
        with self._lock:
            row = self._conn.execute("SELECT reply, score_1, score_2 FROM judgments WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return CachedJudgment(reply=row[0], scores=(float(row[1]), float(row[2])))

    def put(self, key: str, *, judge_model: str, prompt_version: str, reply: str,
            scores: tuple[float, float]) -> None:
        with self._lock, self._conn:  # `with conn` commits the transaction (or rolls it back)
            self._conn.execute(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, judge_model, prompt_version, reply, float(scores[0]), float(scores[1]), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "JudgeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
