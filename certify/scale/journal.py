"""The resume journal (``--resume FILE``): finished rows as JSON lines, appended and flushed as they come.

The first line records the run's command and settings; each further line is ``{"key": ..., "row": ...}``.
Running the same command again with the same file skips the keys already there and appends the rest, so an
interrupted run (Ctrl-C, a lost machine) continues where it stopped. A last line cut short by the
interruption is dropped. A journal written by a different command or with different settings is refused:
mixing their rows would silently answer a different question.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CertifyError, UsageError


class Journal:
    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        header = json.loads(json.dumps(header))  # as it reads back (tuples become lists)
        self.rows: dict[str, Any] = {}
        lines: list[str] = []
        if self.path.exists() and self.path.stat().st_size:
            try:
                text = self.path.read_text()
            except OSError as exc:
                raise CertifyError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
            for n, line in enumerate(text.split("\n")):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    if n == len(text.split("\n")) - 1:  # the last line, cut short by the interruption
                        break
                    raise CertifyError(f"{path}:{n + 1}: not a certify resume journal (malformed JSON)") from None
                if n == 0:
                    if not isinstance(item, dict) or "journal" not in item:
                        raise CertifyError(f"{path}: not a certify resume journal (no header line)")
                    if item["journal"] != header:
                        diff = sorted(k for k in set(item["journal"]) | set(header)
                                      if item["journal"].get(k) != header.get(k))
                        raise UsageError(f"--resume {path}: written by a run with other settings "
                                         f"({', '.join(diff)} differ); use a new file, or the same settings")
                elif isinstance(item, dict) and "key" in item:
                    self.rows[item["key"]] = item["row"]
                lines.append(line)
        try:  # the lines kept, written aside and renamed: an interruption now loses nothing
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("\n".join(lines or [json.dumps({"journal": header})]) + "\n")
            os.replace(tmp, self.path)
            self._file = open(self.path, "a")
        except OSError as exc:
            raise CertifyError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None

    def add(self, key: str, row: Any) -> None:
        self.rows[key] = row
        self._file.write(json.dumps({"key": key, "row": row}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
