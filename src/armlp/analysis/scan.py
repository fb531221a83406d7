"""The verdict for every function of an image: ``armlp scan``.

Most functions of a program share a handful of prologue shapes, so verdicts
are memoised by the prologue's words: a 20,000-function program needs a few
dozen classifications, the rest is dictionary lookups.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from json.encoder import encode_basestring_ascii as _json_str
from mmap import mmap
from operator import attrgetter
from typing import NamedTuple, TextIO

from armlp.analysis.mcount import SITE_WINDOW, McountLocCheck, SiteFinder, check_mcount_loc
from armlp.analysis.prologue import DescribeFn, UndoRecipe, Verdict, classify_arm
from armlp.analysis.prologue_t32 import classify_thumb
from armlp.elf.image import ElfImage
from armlp.elf.symbols import FunctionSymbol
from armlp.errors import AnalysisError

NO_SITE = Verdict(False, reason="no mcount site (notrace, built without -pg, or assembly)",
                  reason_code="no_mcount_site")
class FunctionReport(NamedTuple):
    """Everything scan knows about one function (a NamedTuple: see
    :class:`~armlp.elf.image.Segment`)."""

    fn: FunctionSymbol
    site: int | None
    verdict: Verdict
    prologue: tuple[int, ...] = ()

    @property
    def undo(self) -> UndoRecipe | None:
        return self.verdict.undo

    def to_json(self) -> dict[str, object]:
        fn = self.fn
        return {
            "name": fn.name,
            "sympos": fn.sympos,
            "address": fn.address,
            "size": fn.size,
            "section": fn.section_name,
            "binding": fn.binding,
            "mode": fn.mode,
            "mcount_site": self.site,
            "site_offset": None if self.site is None else self.site - fn.address,
            **_verdict_json(self.verdict),
        }


def _verdict_json(v: Verdict) -> dict[str, object]:
    """The verdict's part of a function's JSON entry (its last keys)."""
    return {
        "patchable": v.patchable,
        "rule": v.rule,
        "reason": v.reason,
        "reason_code": v.reason_code,
        "undo": v.undo.to_json() if v.undo else None,
    }


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _functions_json_parts(reports: Sequence[FunctionReport],
                          shared: dict[tuple[int, str, str, str], tuple[str, str]]
                          ) -> list[str]:
    """``[_dumps(r.to_json()) for r in reports]``, the same texts built faster.

    Thousands of functions share a section, binding, mode and one of a few
    dozen verdicts: those keys are encoded once per combination (*shared*,
    kept between calls) and each function is one format string.
    """
    parts: list[str] = []
    append = parts.append
    enc = _json_str
    # Records unpacked, not read field by field: both are tuples.
    for (name, sympos, address, size, mode, _, section_name, binding, _), site, v, _ in reports:
        key = (id(v), section_name, binding, mode)
        keys = shared.get(key)
        if keys is None:
            keys = shared[key] = (
                f'"section":{enc(section_name)},"binding":{enc(binding)},"mode":{enc(mode)},',
                _dumps(_verdict_json(v))[1:])
        middle, tail = keys
        if site is None:
            append(f'{{"name":{enc(name)},"sympos":{sympos},"address":{address},'
                   f'"size":{size},{middle}"mcount_site":null,"site_offset":null,{tail}')
        else:
            append(f'{{"name":{enc(name)},"sympos":{sympos},"address":{address},'
                   f'"size":{size},{middle}"mcount_site":{site},'
                   f'"site_offset":{site - address},{tail}')
    return parts


class Tally(NamedTuple):
    """The counts behind a scan's summary: they add up over the parts of an
    image scanned apart (:mod:`armlp.analysis.split`)."""

    functions: int
    with_site: int
    patchable: int
    by_verdict: dict[str, int]

    def plus(self, other: Tally) -> Tally:
        by_verdict = Counter(self.by_verdict)
        by_verdict.update(other.by_verdict)
        return Tally(self.functions + other.functions, self.with_site + other.with_site,
                     self.patchable + other.patchable, dict(sorted(by_verdict.items())))

    def summary(self) -> dict[str, object]:
        sites = self.with_site
        return {
            "functions": self.functions,
            "with_mcount_site": sites,
            "patchable": self.patchable,
            "coverage_percent": round(100.0 * self.patchable / sites, 2) if sites else 0.0,
            "by_verdict": self.by_verdict,
        }


class ScanResult:
    """The verdicts of one image, plus what the image says of itself."""

    def __init__(self, image: ElfImage, functions: list[FunctionReport]) -> None:
        self.image = image
        self.functions = functions
        self.mcount_loc: McountLocCheck | None = None
        self.notes: list[str] = []

    def counts(self) -> dict[str, int]:
        return self._counts(self._verdict_counts())

    @staticmethod
    def _counts(verdict_counts: list[tuple[Verdict, int]]) -> dict[str, int]:
        c: Counter[str] = Counter()
        for v, n in verdict_counts:
            c[f"patchable/{v.rule}" if v.patchable else f"unpatchable/{v.reason_code}"] += n
        return dict(sorted(c.items()))

    def _verdict_counts(self) -> list[tuple[Verdict, int]]:
        """Each distinct verdict object with its number of functions (counted
        by identity: verdicts are shared, and hashing them costs more)."""
        verdicts = list(map(attrgetter("verdict"), self.functions))
        ids = list(map(id, verdicts))
        by_id = dict(zip(ids, verdicts, strict=True))
        return [(by_id[i], n) for i, n in Counter(ids).items()]

    @property
    def patchable(self) -> int:
        return sum(n for v, n in self._verdict_counts() if v.patchable)

    @property
    def with_site(self) -> int:
        return len(self.functions) - list(map(attrgetter("site"), self.functions)).count(None)

    def check_mcount_loc(self, sites: Iterable[int | None]) -> None:
        """Compare a linked image's ``__mcount_loc`` table with *sites*,
        every function's (see :func:`~armlp.analysis.mcount.check_mcount_loc`)."""
        if not self.image.is_relocatable:
            self.mcount_loc = check_mcount_loc(self.image, sites)

    def tally(self) -> Tally:
        verdict_counts = self._verdict_counts()
        return Tally(len(self.functions), self.with_site,
                     sum(n for v, n in verdict_counts if v.patchable),
                     self._counts(verdict_counts))

    def summary(self) -> dict[str, object]:
        return self.tally().summary()

    def to_json(self) -> dict[str, object]:
        return {**self._json_header(), "functions": [r.to_json() for r in self.functions]}

    def to_json_text(self) -> str:
        """``json.dumps(self.to_json(), separators=(",", ":"))``, built faster."""
        out = io.StringIO()
        self.write_json(out)
        return out.getvalue()

    def write_json(self, out: TextIO, *, tally: Tally | None = None,
                   rest: Iterable[str] = ()) -> None:
        """Write :meth:`to_json_text` to *out*, a few hundred functions at a
        time: a 20,000-function image is 7 MB of JSON, which is cheaper to
        write in pieces than to join into one string first.

        For a result that holds only the first part of an image's functions
        (:mod:`armlp.analysis.split`): *tally* counts the whole image, and
        *rest* is the text of the other functions' entries, in pieces."""
        head = _dumps({**self._json_header(tally), "functions": None})
        assert head.endswith('"functions":null}')
        out.write(head[:-5])
        out.write("[")
        for k, piece in enumerate(self.functions_json()):
            if k:
                out.write(",")
            out.write(piece)
        for k, piece in enumerate(rest):
            if not k and self.functions:
                out.write(",")
            out.write(piece)
        out.write("]}")

    def functions_json(self, chunk: int = 256) -> Iterator[str]:
        """The entries of :meth:`to_json_text`'s ``functions``, *chunk* to a
        piece (comma-separated within it; the pieces still need theirs)."""
        shared: dict[tuple[int, str, str, str], tuple[str, str]] = {}
        for k in range(0, len(self.functions), chunk):
            yield ",".join(_functions_json_parts(self.functions[k:k + chunk], shared))

    def _json_header(self, tally: Tally | None = None) -> dict[str, object]:
        """Every key of :meth:`to_json` but ``functions`` (which comes last)."""
        img = self.image
        loc = self.mcount_loc
        return {
            "file": str(img.path),
            "kind": img.kind,
            "build_id": img.build_id,
            "summary": (tally or self.tally()).summary(),
            "mcount_loc": None if loc is None else {
                "entries": loc.entries, "agrees": loc.agrees,
                "only_in_table": loc.only_in_table, "only_decoded": loc.only_decoded},
            "notes": self.notes,
        }

    def find(self, name: str, sympos: int | None = None) -> FunctionReport:
        """The report of function *name* (kernel sympos rules)."""
        same = [r for r in self.functions if r.fn.name == name]
        if not same:
            raise AnalysisError(f"{self.image.path}: no function named {name!r}")
        if not sympos:
            if len(same) > 1:
                raise AnalysisError(f"{self.image.path}: {name!r} is ambiguous: {len(same)} "
                                    f"functions share the name; give NAME,SYMPOS with "
                                    f"SYMPOS 1..{len(same)}")
            return same[0]
        for r in same:
            if r.fn.sympos == sympos:
                return r
        if sympos == 1 and len(same) == 1:    # kernel rule: a unique name is also sympos 1
            return same[0]
        raise AnalysisError(f"{self.image.path}: {name!r} has no sympos {sympos}")


def classify_all(image: ElfImage, finder: SiteFinder, funcs: Iterable[FunctionSymbol],
                 sites: Iterable[int | None], cache: dict[tuple[int, ...], Verdict],
                 describe: DescribeFn) -> list[FunctionReport]:
    """The report of each function of *funcs* from its mcount site.

    Verdicts are memoised in *cache* by the prologue's words, and before
    that by its bytes (one slice, no int objects; functions with the same
    prologue share one tuple).  The current section stays at hand: functions
    come sorted by section.
    """
    # Rows first, records at the end: FunctionReport's own __new__ is a
    # Python function, tuple.__new__ over the rows runs at C speed.
    rows: list[tuple[FunctionSymbol, int | None, Verdict, tuple[int, ...]]] = []
    append = rows.append
    by_bytes: dict[bytes, tuple[tuple[int, ...], Verdict]] = {}
    thumb: dict[bytes, Verdict] = {}
    section, base = -1, 0
    words: Sequence[int] = ()
    buf: bytes | mmap = b""         # the byte at address a is buf[at + a]
    at = 0
    for fn, site in zip(funcs, sites, strict=True):
        if site is None:
            append((fn, None, NO_SITE, ()))
            continue
        offset = site - fn.address
        if fn.section != section:
            sec = image.sections[fn.section]
            section, words = fn.section, finder.words(sec)
            buf, start = finder.raw(sec)
            base, at = sec.addr, start - sec.addr
        if fn.mode == "thumb" and offset <= SITE_WINDOW:
            code = buf[at + fn.address:at + site]
            verdict = thumb.get(code)
            if verdict is None:
                verdict = thumb[code] = classify_thumb(code)
            append((fn, site, verdict, ()))
            continue
        if offset > SITE_WINDOW:
            append((fn, site, Verdict(
                False, reason=f"mcount site at +{offset:#x} is too far from the entry "
                              f"(window {SITE_WINDOW} bytes): code runs before the hook",
                reason_code="site_too_far"), ()))
            continue
        key = buf[at + fn.address:at + site]
        seen = by_bytes.get(key)
        if seen is None:
            first = (fn.address - base) >> 2
            prologue = tuple(words[first:first + (offset >> 2)])
            verdict = cache.get(prologue)
            if verdict is None:
                verdict = cache[prologue] = classify_arm(prologue, describe)
            seen = by_bytes[key] = (prologue, verdict)
        append((fn, site, seen[1], seen[0]))
    return list(map(tuple.__new__, repeat(FunctionReport), rows))


def analyse_function(image: ElfImage, finder: SiteFinder, fn: FunctionSymbol,
                     cache: dict[tuple[int, ...], Verdict],
                     describe: DescribeFn) -> FunctionReport:
    """Find the site of *fn* and classify its prologue."""
    return classify_all(image, finder, [fn], [finder.find(fn)], cache, describe)[0]


Progress = Callable[[list[FunctionSymbol]], Iterable[FunctionSymbol]]


def scan(image: ElfImage, *, progress: Progress | None = None) -> ScanResult:
    """Classify every function of *image*."""
    funcs = image.symbols.functions(by_address=True)
    result, sites = scan_part(image, funcs, 0, len(funcs), progress=progress)
    result.check_mcount_loc(sites)
    return result


def scan_part(image: ElfImage, funcs: list[FunctionSymbol], start: int, stop: int, *,
              progress: Progress | None = None) -> tuple[ScanResult, list[int | None]]:
    """The result for ``funcs[start:stop]`` of :func:`scan`'s list, without
    the ``__mcount_loc`` check (which needs every site), and the sites."""
    finder = SiteFinder(image)
    sites = finder.find_all(funcs, start, stop)
    part = funcs[start:stop]
    reports = classify_all(image, finder, progress(part) if progress else part, sites, {},
                           DescribeFn())
    result = ScanResult(image, reports)
    if not finder.has_mcount:
        result.notes.append("no mcount calls in this file: build with -pg to make "
                            "functions patchable")
    return result, sites
