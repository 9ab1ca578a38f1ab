"""Append-only Parquet results store.

Each write adds a new part file ``<root>/runs/<utc-time>.<ns>-<id>.parquet`` (names sort in write order) (written to a temporary
file and renamed, so a crash never leaves a half-written part; a writer killed mid-write leaves a hidden
temporary file, which readers skip and :meth:`ResultStore.remove_stale_temporaries` deletes); nothing is
ever rewritten.
:meth:`ResultStore.load` concatenates all parts into one DataFrame.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.errors import DataError
from harness.io import atomic_path, is_temporary, remove_stale_temporaries
from harness.schema import stamp

RESULTS_ROOT = Path(__file__).resolve().parents[1] / "results"


class ResultStore:
    def __init__(self, root: str | Path = RESULTS_ROOT):
        self.root = Path(root)
        self.runs = self.root / "runs"

    @property
    def store_id(self) -> str:
        """This folder's id (created on first use; git-ignored)."""
        id_file = self.root / ".store_id"
        if not id_file.exists():
            try:
                with atomic_path(id_file) as tmp:
                    tmp.write_text(secrets.token_hex(8) + "\n")
            except OSError as exc:
                raise DataError(f"cannot write {id_file}: {exc}") from exc
        return id_file.read_text().strip()

    def check_writable(self) -> None:
        """Fail early, with a clear message, when results cannot be written here."""
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.runs / ".write-probe") as tmp:
                tmp.write_text("")
            (self.runs / ".write-probe").unlink(missing_ok=True)
            self.store_id  # noqa: B018 - creates .store_id on first use
        except OSError as exc:
            raise DataError(f"results folder {self.root} is not writable ({exc.strerror or exc}); "
                            f"choose another with --results-dir") from exc

    def append(self, rows: list[dict]) -> list[dict]:
        """Stamp rows (time of measurement, this folder's id) and store them as one new part;
        return the rows as stored."""
        if not rows:
            return []
        rows = stamp(rows, self.store_id)
        self._write(rows)
        return rows

    def _write(self, rows: list[dict]) -> Path:
        now = time.time_ns()
        stamp = datetime.fromtimestamp(now / 1e9, timezone.utc).strftime("%Y%m%dT%H%M%S")
        path = self.runs / f"{stamp}.{now % 10**9:09d}-{uuid.uuid4().hex[:8]}.parquet"
        try:
            with atomic_path(path, suffix=".parquet") as tmp:
                pd.DataFrame(rows).to_parquet(tmp, index=False)
        except OSError as exc:
            raise DataError(f"cannot write results to {path.parent} ({exc.strerror or exc})") from exc
        return path

    def parts(self) -> list[Path]:
        """The stored part files in write order (hidden temporaries of unfinished writes excluded)."""
        if not self.runs.exists():
            return []
        return sorted(p for p in self.runs.glob("*.parquet") if not is_temporary(p))

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary part and raw files left by writers that were killed mid-write."""
        raw = [p for d in sorted((self.root / "raw").glob("*/")) for p in remove_stale_temporaries(d)]
        return remove_stale_temporaries(self.runs) + raw

    def load(self) -> pd.DataFrame:
        frames = []
        for part in self.parts():
            try:
                frames.append(pd.read_parquet(part))
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
                raise DataError(f"results file {part} is corrupt ({exc}); move it away to continue") from exc
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True, sort=False)

    def done_hashes(self, statuses: tuple[str, ...] = ("ok",)) -> set[str]:
        """Config hashes this folder measured itself with one of ``statuses`` (what a resume skips)."""
        df = self.load()
        if df.empty or "store_id" not in df:
            return set()
        mine = df[(df["store_id"] == self.store_id) & df["status"].isin(statuses)]
        return set(mine["config_hash"])

    def measured_here(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``df`` that this folder measured itself."""
        if df.empty or "store_id" not in df:
            return df.iloc[0:0]
        return df[df["store_id"] == self.store_id]


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the most recent run of each config hash."""
    if df.empty:
        return df
    # stable: rows stamped alike keep the store's write order
    return df.sort_values("created_utc", kind="mergesort").drop_duplicates("config_hash", keep="last")
