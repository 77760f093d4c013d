"""Movie facts from Wikidata (``bokeh-sampledata``'s ``_data/movies.db``, table ``omdb``, CC0).

Movies are matched on (normalised title, year). MovieLens writes titles as ``"Usual Suspects, The
(1995)"`` and often adds an alternative title in parentheses (``"Seven (Se7en)"``); the database
writes ``"The Usual Suspects"``. Normalising moves trailing articles to the front, drops accents,
punctuation and parenthesised parts, and drops a leading English article. When the main title does
not match, each parenthesised alternative title is tried with the same year. A year never matches
a different year: remakes share titles.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sqlite3
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_ARTICLES = r"the|a|an|il|la|le|les|l'|el|der|die|das|lo|los|las|o|un|une|i"
_TRAILING_ARTICLE = re.compile(rf"^(.*?),\s*({_ARTICLES})$", re.IGNORECASE)
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_PARENS = re.compile(r"\s*\(([^()]*)\)")


def movies_db_path() -> Path:
    """The SQLite file inside the installed ``bokeh-sampledata`` package (not imported)."""
    spec = importlib.util.find_spec("bokeh_sampledata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package bokeh-sampledata is not installed (scripts/bootstrap.sh installs it --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "_data" / "movies.db"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from bokeh-sampledata")
    return path


def split_title_year(title: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; a title without a year -> ``(title, None)``."""
    m = _YEAR_SUFFIX.search(title)
    if m is None:
        return title.strip(), None
    return title[: m.start()].strip(), int(m.group(1))


def display_title(title: str) -> str:
    """``"Usual Suspects, The"`` -> ``"The Usual Suspects"`` (also before a parenthesised part)."""
    title = title.strip()
    m = re.match(r"^(.*?)((?:\s*\([^()]*\))*)$", title)
    main, rest = (m.group(1), m.group(2)) if m else (title, "")
    a = _TRAILING_ARTICLE.match(main)
    if a:
        article = a.group(2)
        main = f"{article}{a.group(1)}" if article.endswith("'") else f"{article} {a.group(1)}"
    return main + rest


def normalise_title(title: str) -> str:
    """Matching key of a title: ``"Usual Suspects, The (1995)"`` and ``"The Usual Suspects"`` -> ``"usual suspects"``."""
    t = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower().strip()
    t = _YEAR_SUFFIX.sub("", t)
    t = _PARENS.sub("", t).strip()
    a = _TRAILING_ARTICLE.match(t)
    if a:
        t = f"{a.group(2)} {a.group(1)}"
    t = t.replace("&", " and ")
    t = re.sub(r"[^a-z0-9]+", " ", t).strip()
    return re.sub(r"^(the|a|an) ", "", t)


def alternative_titles(title: str) -> list[str]:
    """Parenthesised alternative titles: ``"Seven (Se7en)"`` -> ``["Se7en"]`` (a year is not one)."""
    return [p for p in _PARENS.findall(title) if not re.fullmatch(r"\d{4}(?:[-–]\d{0,4})?", p.strip())]


@dataclass(frozen=True)
class MovieFacts:
    """One movie's Wikidata fields (None where unknown)."""

    title: str
    year: int
    director: str | None
    writer: str | None
    cast: str | None
    country: str | None
    language: str | None
    runtime: float | None


class MovieFactsIndex:
    """(normalised title, year) -> ``MovieFacts`` over the ``omdb`` table.

    Args:
        path: the SQLite file (default: the one in ``bokeh-sampledata``).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        path = Path(path) if path is not None else movies_db_path()
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            rows = con.execute(
                'SELECT "Title", "Year", "Director", "Writer", "Cast", "Country", "Language", "Runtime" '
                'FROM omdb WHERE "Title" IS NOT NULL AND "Year" IS NOT NULL ORDER BY "ID"'
            ).fetchall()
        self._index: dict[tuple[str, int], MovieFacts] = {}
        self.ambiguous = 0
        for title, year, director, writer, cast, country, language, runtime in rows:
            key = (normalise_title(title), int(year))
            if key in self._index:
                self.ambiguous += 1  # the lowest database ID wins, deterministically
                continue
            blank = lambda s: s if isinstance(s, str) and s.strip() else None  # noqa: E731
            self._index[key] = MovieFacts(
                title,
                int(year),
                blank(director),
                blank(writer),
                blank(cast),
                blank(country),
                blank(language),
                float(runtime) if runtime else None,
            )
        logger.info("movies.db: %d movies (%d duplicate title/year keys skipped)", len(self._index), self.ambiguous)

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, title: str, year: int | None) -> MovieFacts | None:
        """The movie for a MovieLens-style title and year, trying alternative titles second."""
        if year is None:
            return None
        for candidate in [title, *alternative_titles(title)]:
            facts = self._index.get((normalise_title(candidate), int(year)))
            if facts is not None:
                return facts
        return None

    def lookup_all(self, titles: Sequence[str | None], years: Sequence[int | None]) -> list[MovieFacts | None]:
        found = [self.lookup(t, y) if t else None for t, y in zip(titles, years)]
        logger.info(
            "movies.db matched %d of %d items by (normalised title, year)",
            sum(f is not None for f in found),
            len(found),
        )
        return found
